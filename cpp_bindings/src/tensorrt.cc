// Native TensorRT backend; without JZI_WITH_TENSORRT only the availability check is compiled.
#include "jzi/tensorrt.h"

#include "jzi/tiles.h"

namespace jzi {
namespace {
// Bundle file roles of the three engines ({graph}_engine, written by jzi-export --trt), if all are there.
bool has_engines(const Manifest& m) {
    for (const char* g : kGraphs)
        if (!m.has_file(std::string(g) + "_engine")) return false;
    return true;
}
constexpr const char* kNoEngines = "the bundle has no TensorRT engines (build them on this device: jzi-export --trt-only BUNDLE)";
}  // namespace
}  // namespace jzi

#ifndef JZI_WITH_TENSORRT

namespace jzi {
bool tensorrt_compiled() { return false; }

std::string tensorrt_availability(const Manifest& manifest) {
    if (!has_engines(manifest)) return kNoEngines;
    return "this jzi library was built without TensorRT (configure with -DJZI_WITH_TENSORRT=ON where TensorRT is installed)";
}

std::unique_ptr<Backend> open_tensorrt_backend(const Manifest& manifest, const std::vector<std::string>&) {
    throw BackendUnavailable("TensorRT backend not available: " + tensorrt_availability(manifest));
}
}  // namespace jzi

#else  // JZI_WITH_TENSORRT

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

namespace jzi {
namespace {

void cuda_check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw BackendUnavailable(std::string("CUDA call ") + what + " failed: " + cudaGetErrorString(err));
}
#define JZI_CUDA(call) cuda_check((call), #call)

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "tensorrt: %s\n", msg);
    }
};

nvinfer1::Dims dims(std::initializer_list<int64_t> sizes) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(sizes.size());
    int i = 0;
    for (int64_t s : sizes) d.d[i++] = s;
    return d;
}

nvinfer1::Dims dims(const std::vector<int64_t>& sizes) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) d.d[i] = sizes[i];
    return d;
}

size_t dtype_size(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kINT64: return 8;
        case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kUINT8: return 1;
        default: return 4;
    }
}

float half_bits_to_float(uint16_t h) { return half_to_float(h); }

struct Cuda {
    cudaStream_t stream = nullptr;
    std::vector<void*> device, host;  // freed with the backend
    Cuda() { JZI_CUDA(cudaStreamCreate(&stream)); }
    ~Cuda() {
        for (void* p : device) cudaFree(p);
        for (void* p : host) cudaFreeHost(p);
        if (stream) cudaStreamDestroy(stream);
    }
    void* malloc(size_t n) {
        void* p = nullptr;
        JZI_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1)));
        device.push_back(p);
        return p;
    }
    // Page-locked host memory (copies captured in a CUDA graph need it), zeroed.
    void* pinned(size_t n) {
        void* p = nullptr;
        JZI_CUDA(cudaMallocHost(&p, std::max<size_t>(n, 1)));
        std::memset(p, 0, std::max<size_t>(n, 1));
        host.push_back(p);
        return p;
    }
    void copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) { JZI_CUDA(cudaMemcpyAsync(dst, src, n, kind, stream)); }
    void sync() { JZI_CUDA(cudaStreamSynchronize(stream)); }
};

struct Engine {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::vector<std::string> inputs, outputs;
    int64_t max_batch = 1;

    Engine(nvinfer1::IRuntime& runtime, const fs::path& path) {
        std::ifstream f(path, std::ios::binary);
        std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        engine.reset(runtime.deserializeCudaEngine(data.data(), data.size()));
        if (!engine)
            throw BackendUnavailable(path.string() + ": TensorRT cannot deserialize it (built by another TensorRT version or for "
                                     "another GPU? rebuild with jzi-export --trt-only)");
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(name);
        }
        if (inputs.empty() || outputs.empty()) throw BackendUnavailable(path.string() + ": an engine without inputs or outputs");
        max_batch = engine->getProfileShape(inputs[0].c_str(), 0, nvinfer1::OptProfileSelector::kMAX).d[0];
    }
    nvinfer1::DataType dtype(const std::string& name) const { return engine->getTensorDataType(name.c_str()); }
};

class TrtBackend;

// Pinned host inputs, the device KV cache in two sets, one captured CUDA graph per swap direction.
class TrtDecoderStep : public DecoderStep {
public:
    TrtDecoderStep(Cuda& cuda, Engine& engine, const Manifest& m, int batch) : DecoderStep(m, batch), cuda_(cuda) {
        ctx_.reset(engine.engine->createExecutionContext());
        if (!ctx_) throw BackendUnavailable("TensorRT cannot create a decoder execution context");
        query_ = static_cast<float*>(cuda.pinned(size_t(batch) * width_ * 4));
        view_ = static_cast<float*>(cuda.pinned(size_t(batch) * width_ * 4));
        prev_action_ = static_cast<int64_t*>(cuda.pinned(size_t(batch) * 8));
        step_ = static_cast<int64_t*>(cuda.pinned(8));
        logits_ = static_cast<float*>(cuda.pinned(size_t(batch) * n_actions_ * 4));
        small_ = {{"query", query_, size_t(batch) * width_ * 4, {batch, width_}},
                  {"view", view_, size_t(batch) * width_ * 4, {batch, width_}},
                  {"prev_action", prev_action_, size_t(batch) * 8, {batch}},
                  {"step", step_, 8, {}}};
        for (auto& s : small_) {
            s.device = cuda.malloc(s.bytes);
            ctx_->setInputShape(s.name, dims(s.shape));
        }
        d_logits_ = cuda.malloc(size_t(batch) * n_actions_ * 4);
        cache_bytes_ = cache_elems_ * 4;
        past_ = past_names(layers_);
        present_ = present_names(layers_);
        for (auto& set : sets_)
            for (size_t i = 0; i < past_.size(); ++i) set.push_back(cuda.malloc(cache_bytes_));
        for (const auto& name : past_) ctx_->setInputShape(name.c_str(), dims(cache_shape_));
        for (int p = 0; p < 2; ++p) graphs_[p] = capture(p);
    }

    ~TrtDecoderStep() override {
        for (auto g : graphs_)
            if (g) cudaGraphExecDestroy(g);
    }

    void reset() override { reset_parity(parity_); }

    const float* run() override {
        if (graphs_[parity_]) {
            JZI_CUDA(cudaGraphLaunch(graphs_[parity_], cuda_.stream));
        } else {
            bind(parity_);
            enqueue();
        }
        cuda_.sync();
        return logits_;
    }

    void advance(const int64_t* parents) override {
        if (!parents) {
            parity_ ^= 1;
            return;
        }
        const size_t rb = cache_bytes_ / batch_;
        for (size_t t = 0; t < past_.size(); ++t) {
            auto* dst = static_cast<char*>(sets_[parity_][t]);
            const auto* src = static_cast<const char*>(sets_[1 - parity_][t]);
            for (int row = 0; row < batch_; ++row) cuda_.copy(dst + row * rb, src + parents[row] * rb, rb, cudaMemcpyDeviceToDevice);
        }
        cuda_.sync();
    }

private:
    struct Small {
        const char* name;
        void* host;
        size_t bytes;
        std::vector<int64_t> shape;
        void* device = nullptr;
    };

    void bind(int parity) {
        for (auto& s : small_) ctx_->setTensorAddress(s.name, s.device);
        ctx_->setTensorAddress("logits", d_logits_);
        for (size_t i = 0; i < past_.size(); ++i) {
            ctx_->setTensorAddress(past_[i].c_str(), sets_[parity][i]);
            ctx_->setTensorAddress(present_[i].c_str(), sets_[1 - parity][i]);
        }
    }

    void enqueue() {
        for (auto& s : small_) cuda_.copy(s.device, s.host, s.bytes, cudaMemcpyHostToDevice);
        if (!ctx_->enqueueV3(cuda_.stream)) throw BackendUnavailable("TensorRT failed to run the decoder engine");
        cuda_.copy(logits_, d_logits_, size_t(batch_) * n_actions_ * 4, cudaMemcpyDeviceToHost);
    }

    void reset_parity(int parity) {
        for (void* p : sets_[parity]) JZI_CUDA(cudaMemsetAsync(p, 0, cache_bytes_, cuda_.stream));
    }

    // A CUDA graph of one step for this swap direction; nullptr if capture fails (plain enqueue then).
    cudaGraphExec_t capture(int parity) {
        bind(parity);
        reset_parity(parity);
        enqueue();  // first run outside capture: TensorRT finishes its lazy setup here
        cuda_.sync();
        if (cudaStreamBeginCapture(cuda_.stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return nullptr;
        bool ok = true;
        try {
            enqueue();
        } catch (const Error&) {
            ok = false;
        }
        cudaGraph_t graph = nullptr;
        ok = cudaStreamEndCapture(cuda_.stream, &graph) == cudaSuccess && ok;
        cudaGraphExec_t exec = nullptr;
        if (ok && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();  // a failed capture leaves its (non-sticky) error behind: clear it
        return exec;
    }

    Cuda& cuda_;
    std::unique_ptr<nvinfer1::IExecutionContext> ctx_;
    std::vector<Small> small_;
    void* d_logits_ = nullptr;
    size_t cache_bytes_ = 0;
    std::vector<std::string> past_, present_;
    std::vector<void*> sets_[2];
    cudaGraphExec_t graphs_[2] = {nullptr, nullptr};
    int parity_ = 0;
};

class TrtBackend : public Backend {
public:
    TrtBackend(const Manifest& m, const std::vector<std::string>& graphs) : Backend(m) {
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw BackendUnavailable("TensorRT cannot create a runtime");
        for (const auto& g : graphs) engine(g);
    }
    ~TrtBackend() override { drop_decoders(); }  // execution contexts go before their engines

    std::string name() const override { return "tensorrt"; }
    std::string describe() const override {
        return "tensorrt " + std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH);
    }

    void encode_views(const uint8_t* images, int batch, float* out) override {
        encode("view_encoder", images, batch, manifest_.image_size, manifest_.image_size, out);
    }
    void encode_street(const uint8_t* images, int batch, float* out) override {
        encode("street_encoder", images, batch, manifest_.image_size, 2 * manifest_.image_size, out);
    }

protected:
    std::unique_ptr<DecoderStep> new_decoder(int batch) override {
        Engine& e = engine("decoder");
        if (batch > e.max_batch)
            throw BackendUnavailable("the decoder engine takes at most " + std::to_string(e.max_batch) + " rows (beams x queries), " +
                                     std::to_string(batch) + " asked; rebuild it with a larger profile");
        return std::make_unique<TrtDecoderStep>(cuda_, e, manifest_, batch);
    }

private:
    struct EncoderContext {
        std::unique_ptr<nvinfer1::IExecutionContext> ctx;
        void *d_in = nullptr, *d_out = nullptr;
        int64_t capacity = 0;
    };

    Engine& engine(const std::string& graph) {
        auto it = engines_.find(graph);
        if (it != engines_.end()) return *it->second;
        auto e = std::make_unique<Engine>(*runtime_, manifest_.file(graph + "_engine"));
        if (graph != "decoder") {
            encoders_[graph].ctx.reset(e->engine->createExecutionContext());
            if (!encoders_[graph].ctx) throw BackendUnavailable("TensorRT cannot create an execution context for " + graph);
        }
        return *engines_.emplace(graph, std::move(e)).first->second;
    }

    void encode(const std::string& graph, const uint8_t* images, int batch, int height, int width, float* out) {
        Engine& e = engine(graph);
        EncoderContext& ec = encoders_[graph];
        const std::string& in = e.inputs[0];
        const std::string& outn = e.outputs[0];
        const size_t per_in = size_t(height) * width * 3;
        const auto out_type = e.dtype(outn);
        const size_t per_out = size_t(manifest_.width) * dtype_size(out_type);
        const int64_t cap = std::min<int64_t>(e.max_batch, batch);
        if (ec.capacity < cap) {
            ec.d_in = cuda_.malloc(per_in * cap);
            ec.d_out = cuda_.malloc(per_out * cap);
            ec.capacity = cap;
        }
        std::vector<uint8_t> host(per_out * cap);
        for (int64_t start = 0; start < batch; start += cap) {
            const int64_t n = std::min<int64_t>(cap, batch - start);
            ec.ctx->setInputShape(in.c_str(), dims({n, height, width, 3}));
            ec.ctx->setTensorAddress(in.c_str(), ec.d_in);
            ec.ctx->setTensorAddress(outn.c_str(), ec.d_out);
            cuda_.copy(ec.d_in, images + start * per_in, n * per_in, cudaMemcpyHostToDevice);
            if (!ec.ctx->enqueueV3(cuda_.stream)) throw BackendUnavailable("TensorRT failed to run the " + graph + " engine");
            cuda_.copy(host.data(), ec.d_out, n * per_out, cudaMemcpyDeviceToHost);
            cuda_.sync();
            float* dst = out + start * manifest_.width;
            if (out_type == nvinfer1::DataType::kHALF) {
                const auto* h = reinterpret_cast<const uint16_t*>(host.data());
                for (int64_t i = 0; i < n * manifest_.width; ++i) dst[i] = half_bits_to_float(h[i]);
            } else {
                std::memcpy(dst, host.data(), n * per_out);
            }
        }
    }

    Logger logger_;
    Cuda cuda_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::map<std::string, std::unique_ptr<Engine>> engines_;
    std::map<std::string, EncoderContext> encoders_;
};
}  // namespace

bool tensorrt_compiled() { return true; }

std::string tensorrt_availability(const Manifest& manifest) {
    if (!has_engines(manifest)) return kNoEngines;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return "no CUDA GPU is visible";
    }
    return "ok";
}

std::unique_ptr<Backend> open_tensorrt_backend(const Manifest& manifest, const std::vector<std::string>& graphs) {
    const std::string why = tensorrt_availability(manifest);
    if (why != "ok") throw BackendUnavailable("TensorRT backend not available: " + why);
    return std::make_unique<TrtBackend>(manifest, graphs);
}

}  // namespace jzi

#endif  // JZI_WITH_TENSORRT
