// Inference backends behind one small interface (runtime/backends/__init__.py).
//
// A backend runs a bundle's three graphs:
//
//     encode_views(uint8 [B, S, S, 3])    -> float32 [B, D]
//     encode_street(uint8 [B, S, 2S, 3])  -> float32 [B, D]
//     decoder(batch)                      -> a DecoderStep with preallocated buffers for that batch
//
// A DecoderStep owns the buffers query, view, prev_action, step (inputs the zoom loop writes in place)
// and logits (the output it reads), plus the KV cache in two sets. run() executes one step;
// advance(parents) makes this step's present.* the next step's past_key_values.*: a swap of the two
// sets for greedy decoding, a gather by beam parent for beam search.
//
// Backends: ort-cpu, ort-cuda, ort-trt (ONNX Runtime and its CUDA / TensorRT execution providers when
// the library has them), tensorrt (native engines from the bundle; built with -DJZI_WITH_TENSORRT=ON).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jzi/bundle.h"

namespace jzi {

class DecoderStep {
public:
    DecoderStep(const Manifest& manifest, int batch);
    virtual ~DecoderStep() = default;
    DecoderStep(const DecoderStep&) = delete;
    DecoderStep& operator=(const DecoderStep&) = delete;

    int batch() const { return batch_; }
    float* query() { return query_; }            // [batch, D]
    float* view() { return view_; }              // [batch, D]
    int64_t* prev_action() { return prev_action_; }  // [batch]
    int64_t* step() { return step_; }            // a scalar
    const float* logits() const { return logits_; }  // [batch, A]

    // Clear the KV cache before a new query (unwritten rows must not hold NaN garbage).
    virtual void reset() = 0;
    // One step on the current inputs; returns logits().
    virtual const float* run() = 0;
    // present -> past; with `parents` [batch] (beam search) row b of past becomes row parents[b].
    virtual void advance(const int64_t* parents) = 0;

protected:
    // Host buffers in plain vectors; a backend that needs special memory points these elsewhere.
    void use_host_buffers();

    int batch_, width_, n_actions_, layers_;
    std::vector<int64_t> cache_shape_;  // [batch, heads, cache_len, head_dim]
    size_t cache_elems_ = 0;
    float *query_ = nullptr, *view_ = nullptr, *logits_ = nullptr;
    int64_t *prev_action_ = nullptr, *step_ = nullptr;

private:
    std::vector<float> host_query_, host_view_, host_logits_;
    std::vector<int64_t> host_prev_, host_step_;
};

class Backend {
public:
    explicit Backend(const Manifest& manifest) : manifest_(manifest) {}
    virtual ~Backend() = default;
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;

    virtual std::string name() const = 0;
    virtual std::string describe() const { return name(); }
    virtual void encode_views(const uint8_t* images, int batch, float* out) = 0;
    virtual void encode_street(const uint8_t* images, int batch, float* out) = 0;
    // The DecoderStep for `batch` rows, created once and reused for every later query.
    DecoderStep& decoder(int batch);

protected:
    virtual std::unique_ptr<DecoderStep> new_decoder(int batch) = 0;
    void drop_decoders() { decoders_.clear(); }
    const Manifest& manifest_;

private:
    std::map<int, std::unique_ptr<DecoderStep>> decoders_;
};

extern const char* const kBackends[4];  // ort-cpu, ort-cuda, ort-trt, tensorrt

// {backend, "ok" or why not} for every backend, best first.
std::vector<std::pair<std::string, std::string>> available_backends(const Manifest& manifest);

// The named backend, or with "auto" the first that works of tensorrt, ort-trt, ort-cuda, ort-cpu.
// `graphs` are loaded now; any other graph is loaded on first use. threads <= 0: all usable cores.
std::unique_ptr<Backend> open_backend(const Manifest& manifest, const std::string& backend = "auto", int threads = 0,
                                      const std::vector<std::string>& graphs = {"view_encoder", "street_encoder", "decoder"});

// Cores this process may use (sched_getaffinity): the right intra-op count for one query at a time.
int default_threads();

}  // namespace jzi
