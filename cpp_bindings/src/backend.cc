// The backend interface and the choice between backends (runtime/backends/__init__.py).
#include "jzi/backend.h"

#include <sched.h>
#include <unistd.h>

#include "jzi/onnxrt.h"
#include "jzi/tensorrt.h"

namespace jzi {

const char* const kBackends[4] = {"ort-cpu", "ort-cuda", "ort-trt", "tensorrt"};

DecoderStep::DecoderStep(const Manifest& m, int batch)
    : batch_(batch), width_(m.width), n_actions_(m.n_actions), layers_(m.layers),
      cache_shape_{batch, m.heads, m.cache_len, m.head_dim} {
    cache_elems_ = static_cast<size_t>(batch) * m.heads * m.cache_len * m.head_dim;
}

void DecoderStep::use_host_buffers() {
    host_query_.assign(static_cast<size_t>(batch_) * width_, 0.0f);
    host_view_.assign(static_cast<size_t>(batch_) * width_, 0.0f);
    host_logits_.assign(static_cast<size_t>(batch_) * n_actions_, 0.0f);
    host_prev_.assign(batch_, 0);
    host_step_.assign(1, 0);
    query_ = host_query_.data();
    view_ = host_view_.data();
    logits_ = host_logits_.data();
    prev_action_ = host_prev_.data();
    step_ = host_step_.data();
}

DecoderStep& Backend::decoder(int batch) {
    auto it = decoders_.find(batch);
    if (it == decoders_.end()) it = decoders_.emplace(batch, new_decoder(batch)).first;
    return *it->second;
}

int default_threads() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<int>(n) : 1;
}

std::vector<std::pair<std::string, std::string>> available_backends(const Manifest& manifest) {
    const auto providers = ort_providers_available();
    auto has = [&](const char* p) {
        for (const auto& q : providers)
            if (q == p) return true;
        return false;
    };
    return {{"tensorrt", tensorrt_availability(manifest)},
            {"ort-trt", has("TensorrtExecutionProvider") ? "ok" : "onnxruntime-gpu with TensorRT not installed"},
            {"ort-cuda", has("CUDAExecutionProvider") ? "ok" : "onnxruntime-gpu not installed"},
            {"ort-cpu", "ok"}};
}

std::unique_ptr<Backend> open_backend(const Manifest& manifest, const std::string& backend, int threads,
                                      const std::vector<std::string>& graphs) {
    bool known = backend == "auto";
    for (const char* b : kBackends) known = known || backend == b;
    if (!known)
        throw BackendUnavailable("unknown backend '" + backend + "'; choose auto or one of ort-cpu, ort-cuda, ort-trt, tensorrt");
    const auto status = available_backends(manifest);
    std::string chosen = backend;
    if (backend == "auto") {
        for (const auto& [name, why] : status)
            if (why == "ok") {
                chosen = name;
                break;
            }
    } else {
        for (const auto& [name, why] : status)
            if (name == backend && why != "ok") throw BackendUnavailable(backend + " backend not available: " + why);
    }
    if (chosen == "tensorrt") return open_tensorrt_backend(manifest, graphs);
    return std::make_unique<OrtBackend>(manifest, chosen.substr(4), threads, graphs);
}

}  // namespace jzi
