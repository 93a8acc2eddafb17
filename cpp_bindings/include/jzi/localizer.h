// The zoom loop: one street photo in, a latitude/longitude out (runtime/localizer.py).
//
//     jzi::Localizer loc("bundle/", "region.jzt");         // backend "auto", all cores
//     jzi::Localization r = loc.localize_file("photo.jpg");  // greedy
//     r.latitude, r.longitude, r.path, r.step_probs, r.confidence, r.timings
//     r = loc.localize_file("photo.jpg", 4);                 // beam search: r.candidates, the top 4 cells
//
// Per query: decode and stretch the photo to S x 2S, one street-encoder call on the batch of queries,
// then for each of the `steps` levels:
//
//     1. read the embedding row of the current view from the tile store's memory map,
//     2. run one decoder step against the KV cache (its buffers were allocated once),
//     3. log-softmax over the cells, then argmax (greedy) or top-k over beams x cells (beam search),
//     4. hand this step's cache to the next step: a swap of the two sets (greedy) or a gather by parent.
//
// The answer is the centre of the last chosen cell; the confidence is the product of the chosen
// cells' probabilities. Calls on one Localizer are serialised (a mutex), so threads may share it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "jzi/backend.h"
#include "jzi/bundle.h"
#include "jzi/images.h"
#include "jzi/tiles.h"

namespace jzi {

struct Candidate {
    double latitude = 0, longitude = 0;
    std::vector<int64_t> path;
    double score = 0;        // sum of the chosen cells' log-probabilities
    double probability = 0;  // exp(score)
};

// Milliseconds per stage, the keys of the Python Localization.timings.
struct Timings {
    double read_ms = 0, preprocess_ms = 0, encoder_ms = 0, total_ms = 0;
    int batch = 0;
    double tiles_ms = 0, decoder_ms = 0, zoom_ms = 0;
    std::vector<double> decoder_steps_ms;
};

struct Localization {
    double latitude = 0, longitude = 0;
    std::vector<int64_t> path;
    std::vector<double> step_probs;
    double confidence = 0;
    std::vector<Candidate> candidates;  // beam search only, best first
    Timings timings;
};

struct LocalizerOptions {
    std::string backend = "auto";
    int threads = 0;  // <= 0: all usable cores
    bool verify_bundle = true;
};

class Localizer {
public:
    Localizer(const fs::path& bundle, const fs::path& tiles, const LocalizerOptions& options = {});

    Localization localize_file(const fs::path& photo, int beams = 1, int64_t max_pixels = kMaxPixels);
    // Several decoded RGB photos (uint8 [H, W, 3]) in one encoder batch and one decoder batch.
    std::vector<Localization> localize_batch(const std::vector<cv::Mat>& rgbs, int beams = 1);
    // The decoder loop from street embeddings `query` [n_queries, D]: one Localization per row.
    std::vector<Localization> zoom(const float* query, int n_queries, int beams = 1);

    const Manifest& manifest() const { return manifest_; }
    const TileStore& store() const { return store_; }
    const Region& region() const { return store_.region(); }
    Backend& backend() { return *backend_; }
    std::string describe() const;

private:
    std::vector<Localization> zoom_locked(const float* query, int n_queries, int beams);

    Manifest manifest_;
    TileStore store_;
    std::unique_ptr<Backend> backend_;
    int image_size_, n_actions_, steps_;
    std::mutex mutex_;
    std::map<int, std::vector<uint8_t>> street_;  // batch -> preallocated uint8 [B, S, 2S, 3]
    std::vector<float> embeddings_;               // [B, D] encoder output
};

// Refuse a store that this bundle cannot read, naming what differs (Error(Localizer)).
void check_pair(const Manifest& manifest, const TileStore& store);

}  // namespace jzi
