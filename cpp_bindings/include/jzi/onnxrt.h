// ONNX Runtime backend (C++ API): CPU with explicit threads, CUDA / TensorRT execution providers when
// the library has them (runtime/backends/onnxrt.py).
//
// The decoder runs through I/O binding: inputs, outputs and both KV-cache sets are bound once to
// preallocated host buffers, the zoom loop writes its inputs in place, and the cache moves from
// present.* to past_key_values.* by switching between two bindings (no copy, no rebinding) or, for
// beam search, by one gather of rows per tensor. With the CUDA / TensorRT providers ONNX Runtime
// copies a bound host buffer to the device when it is bound, so those steps bind their inputs again
// before each run (the native TensorRT backend keeps the cache on the device).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "jzi/backend.h"

namespace jzi {

// Execution providers the linked ONNX Runtime library offers.
std::vector<std::string> ort_providers_available();
// "1.32.0 (C API 21 of headers, library supports ...)" for --version style output.
std::string ort_version();

class OrtBackend : public Backend {
public:
    // device: "cpu", "cuda" or "trt".
    OrtBackend(const Manifest& manifest, const std::string& device, int threads, const std::vector<std::string>& graphs);
    ~OrtBackend() override;

    std::string name() const override { return "ort-" + device_; }
    std::string describe() const override;
    void encode_views(const uint8_t* images, int batch, float* out) override;
    void encode_street(const uint8_t* images, int batch, float* out) override;

    struct Impl;

protected:
    std::unique_ptr<DecoderStep> new_decoder(int batch) override;

private:
    void encode(const std::string& graph, const uint8_t* images, int batch, int height, int width, float* out);
    std::string device_;
    int threads_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace jzi
