// ONNX Runtime backend through its C++ API (header-only over the stable C API).
#include "jzi/onnxrt.h"

#define ORT_API_MANUAL_INIT  // the API table is fetched and checked at first use (see ort_api)
#include <onnxruntime_cxx_api.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <set>

namespace jzi {
namespace {

// Fetch the C API table of the linked library once; a library older than the headers has none.
void ort_api() {
    static std::once_flag once;
    static const OrtApi* api = nullptr;
    std::call_once(once, [] {
        api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
        if (api) Ort::InitApi(api);
    });
    if (!api)
        throw BackendUnavailable(std::string("the ONNX Runtime library (") + OrtGetApiBase()->GetVersionString() +
                                 ") is older than the headers jzi was built with (C API " + std::to_string(ORT_API_VERSION) + ")");
}

Ort::Env& env() {
    ort_api();
    static Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "jzi");
    return e;
}

std::string first_line(const std::string& s, size_t limit = 200) { return s.substr(0, std::min(s.find('\n'), limit)); }

ONNXTensorElementDataType element_type(const std::string& dtype) {
    if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (dtype == "float16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    if (dtype == "uint8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    if (dtype == "int64") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    if (dtype == "int32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// The graph's actual inputs/outputs against the manifest's: names, element types, ranks, fixed sizes.
void check_io(Ort::Session& s, const GraphSpec& spec, const fs::path& path) {
    Ort::AllocatorWithDefaultOptions alloc;
    for (int side = 0; side < 2; ++side) {
        const auto& want = side == 0 ? spec.inputs : spec.outputs;
        const size_t n = side == 0 ? s.GetInputCount() : s.GetOutputCount();
        std::map<std::string, Ort::TypeInfo> have;
        for (size_t i = 0; i < n; ++i) {
            auto name = side == 0 ? s.GetInputNameAllocated(i, alloc) : s.GetOutputNameAllocated(i, alloc);
            have.emplace(name.get(), side == 0 ? s.GetInputTypeInfo(i) : s.GetOutputTypeInfo(i));
        }
        std::set<std::string> names;
        for (const auto& t : want) names.insert(t.name);
        bool same = names.size() == have.size();
        for (const auto& t : want) same = same && have.count(t.name);
        const char* what = side == 0 ? "inputs" : "outputs";
        if (!same) throw BundleError(path.string() + ": the graph's " + what + " differ from the manifest's");
        for (const auto& t : want) {
            auto info = have.at(t.name).GetTensorTypeAndShapeInfo();
            const auto dims = info.GetShape();
            bool ok = info.GetElementType() == element_type(t.dtype) && dims.size() == t.shape.size();
            for (size_t d = 0; ok && d < dims.size(); ++d) ok = dims[d] < 0 || t.shape[d] < 0 || dims[d] == t.shape[d];
            if (!ok) throw BundleError(path.string() + ": tensor '" + t.name + "' has another type or shape than the manifest says");
        }
    }
}
}  // namespace

std::vector<std::string> ort_providers_available() {
    ort_api();
    return Ort::GetAvailableProviders();
}

std::string ort_version() {
    return std::string(OrtGetApiBase()->GetVersionString()) + " (built against C API " + std::to_string(ORT_API_VERSION) + ")";
}

struct OrtBackend::Impl {
    Ort::SessionOptions options;
    std::map<std::string, std::unique_ptr<Ort::Session>> sessions;
    Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::string provider;  // the first provider of the sessions
    const Manifest* manifest = nullptr;

    // A new session for `graph`, its inputs and outputs checked against the manifest (thread-safe).
    std::unique_ptr<Ort::Session> load(const std::string& graph) const {
        const fs::path& path = manifest->file(graph);
        std::unique_ptr<Ort::Session> s;
        try {
            s = std::make_unique<Ort::Session>(env(), path.c_str(), options);
        } catch (const Ort::Exception& e) {
            throw BackendUnavailable(path.string() + ": ONNX Runtime cannot load it (" + first_line(e.what()) + ")");
        }
        check_io(*s, manifest->tensors.at(graph), path);
        return s;
    }

    Ort::Session& session(const std::string& graph) {
        auto it = sessions.find(graph);
        if (it == sessions.end()) it = sessions.emplace(graph, load(graph)).first;
        return *it->second;
    }

    // Sessions are created concurrently (ONNX Runtime allows it; each is parsed and optimised on its own
    // thread), and a failure is reported for the first graph in `graphs` that failed, as loading them in
    // turn would.
    void load_all(const std::vector<std::string>& graphs) {
        std::vector<std::future<std::unique_ptr<Ort::Session>>> pending;
        for (const auto& g : graphs) pending.push_back(std::async(std::launch::async, [this, g] { return load(g); }));
        for (size_t i = 0; i < graphs.size(); ++i) sessions.emplace(graphs[i], pending[i].get());
    }
};

OrtBackend::OrtBackend(const Manifest& manifest, const std::string& device, int threads, const std::vector<std::string>& graphs)
    : Backend(manifest), device_(device), threads_(threads > 0 ? threads : default_threads()), impl_(std::make_unique<Impl>()) {
    if (device != "cpu" && device != "cuda" && device != "trt") throw BackendUnavailable("unknown ONNX Runtime device '" + device + "'");
    env();
    auto& o = impl_->options;
    impl_->manifest = &manifest_;
    o.SetIntraOpNumThreads(threads_);
    o.SetInterOpNumThreads(1);
    o.SetExecutionMode(ORT_SEQUENTIAL);
    o.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    o.SetLogSeverityLevel(3);  // warnings about unused initialisers etc. are noise for users
    impl_->provider = "CPUExecutionProvider";
    try {
        if (device == "trt") {  // engines cached per user, so that the second run starts fast
            const char* xdg = std::getenv("XDG_CACHE_HOME");
            const char* home = std::getenv("HOME");
            const fs::path cache = fs::path(xdg ? xdg : (std::string(home ? home : ".") + "/.cache")) / "jzi" / "ort-trt" /
                                   manifest.encoder_id.substr(0, 16);
            fs::create_directories(cache);
            OrtTensorRTProviderOptionsV2* trt = nullptr;
            Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&trt));
            const std::string fp16 = manifest.precision == "fp16" ? "1" : "0";
            const char* keys[] = {"trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable", "trt_fp16_enable"};
            const std::string dir = cache.string();
            const char* values[] = {"1", dir.c_str(), "1", fp16.c_str()};
            Ort::ThrowOnError(Ort::GetApi().UpdateTensorRTProviderOptions(trt, keys, values, 4));
            o.AppendExecutionProvider_TensorRT_V2(*trt);
            Ort::GetApi().ReleaseTensorRTProviderOptions(trt);
            impl_->provider = "TensorrtExecutionProvider";
        }
        if (device == "trt" || device == "cuda") {
            OrtCUDAProviderOptionsV2* cuda = nullptr;
            Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
            o.AppendExecutionProvider_CUDA_V2(*cuda);
            Ort::GetApi().ReleaseCUDAProviderOptions(cuda);
            if (device == "cuda") impl_->provider = "CUDAExecutionProvider";
        }
    } catch (const Ort::Exception& e) {
        throw BackendUnavailable("ort-" + device + " backend not available: " + first_line(e.what()));
    }
    impl_->load_all(graphs);
#ifdef __GLIBC__
    // Creating the sessions (on their own threads, in their own malloc arenas) frees parse and optimiser
    // buffers that malloc keeps for reuse, and the encoder's first run would stack its activations on top:
    // handed back, the official bundle's peak is 80-120 MB lower.
    ::malloc_trim(0);
#endif
}

OrtBackend::~OrtBackend() = default;

std::string OrtBackend::describe() const {
    const std::string used = impl_->sessions.empty() ? "no graph loaded" : impl_->provider;
    return device_ == "cpu" ? name() + " (" + used + ", " + std::to_string(threads_) + " threads)" : name() + " (" + used + ")";
}

void OrtBackend::encode(const std::string& graph, const uint8_t* images, int batch, int height, int width, float* out) {
    Ort::Session& s = impl_->session(graph);
    const GraphSpec& spec = manifest_.tensors.at(graph);
    const int64_t in_shape[4] = {batch, height, width, 3};
    const int64_t out_shape[2] = {batch, manifest_.width};
    const size_t count = static_cast<size_t>(batch) * height * width * 3;
    Ort::Value in = Ort::Value::CreateTensor<uint8_t>(impl_->cpu, const_cast<uint8_t*>(images), count, in_shape, 4);
    Ort::Value res = Ort::Value::CreateTensor<float>(impl_->cpu, out, static_cast<size_t>(batch) * manifest_.width, out_shape, 2);
    const char* in_name = spec.inputs[0].name.c_str();
    const char* out_name = spec.outputs[0].name.c_str();
    try {
        s.Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, &out_name, &res, 1);
    } catch (const Ort::Exception& e) {
        throw BackendUnavailable("ONNX Runtime failed to run the " + graph + " graph (" + first_line(e.what()) + ")");
    }
}

void OrtBackend::encode_views(const uint8_t* images, int batch, float* out) {
    encode("view_encoder", images, batch, manifest_.image_size, manifest_.image_size, out);
}

void OrtBackend::encode_street(const uint8_t* images, int batch, float* out) {
    encode("street_encoder", images, batch, manifest_.image_size, 2 * manifest_.image_size, out);
}

namespace {
// Two cache sets on the host and two I/O bindings, one per direction of the swap, each bound once.
// parity p: past = sets[p], present = sets[1 - p]. Greedy flips parity; beams gather present into past.
class OrtDecoderStep : public DecoderStep {
public:
    // device_inputs: a CUDA / TensorRT provider, to which ONNX Runtime copies a bound host input when it is
    // bound (IOBinding::BindInput), not when the step runs: such a step binds its inputs again before each run.
    OrtDecoderStep(Ort::Session& session, const Ort::MemoryInfo& cpu, const Manifest& m, int batch, bool device_inputs)
        : DecoderStep(m, batch), session_(session), rebind_(device_inputs) {
        use_host_buffers();
        const auto past = past_names(layers_), present = present_names(layers_);
        for (auto& set : sets_) set.assign(past.size(), std::vector<float>(cache_elems_, 0.0f));
        const int64_t vec[2] = {batch, width_}, one[1] = {batch}, logits[2] = {batch, n_actions_};
        for (int p = 0; p < 2; ++p) {
            auto& b = bindings_.emplace_back(session_);
            auto& vals = values_[p];
            auto bind_in = [&](const char* name, Ort::Value v) {
                vals.push_back(std::move(v));
                b.BindInput(name, vals.back());
                inputs_[p].emplace_back(name, vals.size() - 1);
            };
            vals.reserve(8 + 4 * past.size());
            bind_in("query", Ort::Value::CreateTensor<float>(cpu, query_, size_t(batch) * width_, vec, 2));
            bind_in("view", Ort::Value::CreateTensor<float>(cpu, view_, size_t(batch) * width_, vec, 2));
            bind_in("prev_action", Ort::Value::CreateTensor<int64_t>(cpu, prev_action_, size_t(batch), one, 1));
            bind_in("step", Ort::Value::CreateTensor<int64_t>(cpu, step_, 1, nullptr, 0));
            vals.push_back(Ort::Value::CreateTensor<float>(cpu, logits_, size_t(batch) * n_actions_, logits, 2));
            b.BindOutput("logits", vals.back());
            for (size_t i = 0; i < past.size(); ++i) {
                bind_in(past[i].c_str(), cache_value(cpu, sets_[p][i]));
                vals.push_back(cache_value(cpu, sets_[1 - p][i]));
                b.BindOutput(present[i].c_str(), vals.back());
            }
        }
    }

    void reset() override {
        for (auto& t : sets_[parity_]) std::fill(t.begin(), t.end(), 0.0f);
    }

    const float* run() override {
        try {
            if (rebind_)
                for (const auto& [name, index] : inputs_[parity_]) bindings_[parity_].BindInput(name.c_str(), values_[parity_][index]);
            session_.Run(Ort::RunOptions{nullptr}, bindings_[parity_]);
        } catch (const Ort::Exception& e) {
            throw BackendUnavailable("ONNX Runtime failed to run the decoder graph (" + first_line(e.what()) + ")");
        }
        return logits_;
    }

    void advance(const int64_t* parents) override {
        if (!parents) {
            parity_ ^= 1;
            return;
        }
        const size_t row = cache_elems_ / batch_;
        auto& past = sets_[parity_];
        const auto& present = sets_[1 - parity_];
        for (size_t t = 0; t < past.size(); ++t)
            for (int b = 0; b < batch_; ++b)
                std::memcpy(past[t].data() + b * row, present[t].data() + parents[b] * row, row * sizeof(float));
    }

private:
    Ort::Value cache_value(const Ort::MemoryInfo& cpu, std::vector<float>& buf) {
        return Ort::Value::CreateTensor<float>(cpu, buf.data(), buf.size(), cache_shape_.data(), cache_shape_.size());
    }

    Ort::Session& session_;
    std::vector<std::vector<float>> sets_[2];
    std::vector<Ort::IoBinding> bindings_;
    std::vector<Ort::Value> values_[2];
    std::vector<std::pair<std::string, size_t>> inputs_[2];  // (name, index in values_) of each bound input
    bool rebind_;
    int parity_ = 0;
};
}  // namespace

std::unique_ptr<DecoderStep> OrtBackend::new_decoder(int batch) {
    Ort::Session& s = impl_->session("decoder");
    try {
        return std::make_unique<OrtDecoderStep>(s, impl_->cpu, manifest_, batch, device_ != "cpu");
    } catch (const Ort::Exception& e) {
        throw BackendUnavailable("ONNX Runtime cannot bind the decoder graph (" + first_line(e.what()) + ")");
    }
}

}  // namespace jzi
