// The zoom loop, step for step as runtime/localizer.py, so paths and probabilities agree with it.
#include "jzi/localizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

namespace jzi {
namespace {
using Clock = std::chrono::steady_clock;

double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// numpy's pairwise sum for a short row (< 8 values: in order; up to 128: eight interleaved partial sums).
double np_sum(const double* a, int n) {
    if (n < 8) {
        double res = 0.0;
        for (int i = 0; i < n; ++i) res += a[i];
        return res;
    }
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int i = 8;
    for (; i < n - (n % 8); i += 8)
        for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
}

// log-softmax of one row of float32 logits in float64, as the Python loop computes it.
void log_softmax(const float* logits, int n, double* out, double* scratch) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
    for (int i = 0; i < n; ++i) out[i] = static_cast<double>(logits[i]) - mx;
    for (int i = 0; i < n; ++i) scratch[i] = std::exp(out[i]);
    const double lse = std::log(np_sum(scratch, n));
    for (int i = 0; i < n; ++i) out[i] -= lse;
}
}  // namespace

void check_pair(const Manifest& m, const TileStore& store) {
    const Region& r = store.region();
    const std::string where = store.path().string();
    if (store.encoder_id() != m.encoder_id)
        throw LocalizerError(where + ": built by encoder " + store.encoder_id().substr(0, 12) + ", but the bundle's encoder is " +
                             m.encoder_id.substr(0, 12) + "; rebuild it with jzi-tiles build --engine BUNDLE");
    if (store.dim() != m.width)
        throw LocalizerError(where + ": embeddings are " + std::to_string(store.dim()) + "-wide, the bundle's decoder takes " +
                             std::to_string(m.width));
    if (r.grid != m.grid || r.steps != m.steps) {
        const std::string g = std::to_string(m.grid);
        throw LocalizerError(where + ": a " + std::to_string(r.grid) + "x" + std::to_string(r.grid) + " grid over " +
                             std::to_string(r.steps) + " steps, the bundle's decoder zooms " + g + "x" + g + " over " +
                             std::to_string(m.steps) + " steps");
    }
    if (r.view_px != m.image_size)
        throw LocalizerError(where + ": views rendered at " + std::to_string(r.view_px) + " px, the bundle's encoder takes " +
                             std::to_string(m.image_size) + " px");
}

Localizer::Localizer(const fs::path& bundle, const fs::path& tiles, const LocalizerOptions& options)
    : manifest_(load_manifest(bundle, options.verify_bundle)), store_(tiles) {
    check_pair(manifest_, store_);
    // localizing needs no view encoder: leave it unloaded
    backend_ = open_backend(manifest_, options.backend, options.threads, {"street_encoder", "decoder"});
    image_size_ = manifest_.image_size;
    n_actions_ = store_.region().n_actions();
    steps_ = store_.region().steps;
}

std::string Localizer::describe() const {
    const Region& r = store_.region();
    char buf[160];
    std::snprintf(buf, sizeof(buf), "; store %s: %d steps over %g km, %.2f m cells, %s", store_.path().filename().c_str(),
                  r.steps, r.size_m / 1000, r.cell_size_m(), store_.dtype().c_str());
    return backend_->describe() + buf;
}

Localization Localizer::localize_file(const fs::path& photo, int beams, int64_t max_pixels) {
    const auto t0 = Clock::now();
    cv::Mat rgb = read_image(photo, max_pixels);
    const double read = ms(t0, Clock::now());
    Localization r = localize_batch({rgb}, beams).at(0);
    r.timings.read_ms += read;
    r.timings.total_ms += read;
    return r;
}

std::vector<Localization> Localizer::localize_batch(const std::vector<cv::Mat>& images, int beams) {
    if (images.empty()) return {};
    std::lock_guard<std::mutex> lock(mutex_);
    const auto t0 = Clock::now();
    std::vector<cv::Mat> rgbs;
    rgbs.reserve(images.size());
    for (const auto& img : images) rgbs.push_back(img.type() == CV_8UC3 ? img : to_rgb8(img));
    const auto t1 = Clock::now();
    const int n = static_cast<int>(rgbs.size());
    const size_t per = static_cast<size_t>(image_size_) * 2 * image_size_ * 3;
    auto& batch = street_[n];
    batch.resize(per * n);
    for (int i = 0; i < n; ++i) street_input(rgbs[i], image_size_, batch.data() + per * i);
    const auto t2 = Clock::now();
    embeddings_.resize(static_cast<size_t>(n) * manifest_.width);
    backend_->encode_street(batch.data(), n, embeddings_.data());
    const auto t3 = Clock::now();
    auto results = zoom_locked(embeddings_.data(), n, beams);
    const auto t4 = Clock::now();
    for (auto& r : results) {
        r.timings.read_ms = ms(t0, t1);
        r.timings.preprocess_ms = ms(t1, t2);
        r.timings.encoder_ms = ms(t2, t3);
        r.timings.batch = n;
        r.timings.total_ms = ms(t0, t4);
    }
    return results;
}

std::vector<Localization> Localizer::zoom(const float* query, int n_queries, int beams) {
    std::lock_guard<std::mutex> lock(mutex_);
    return zoom_locked(query, n_queries, beams);
}

std::vector<Localization> Localizer::zoom_locked(const float* query, int n_queries, int beams) {
    const auto t_start = Clock::now();
    const int k = beams, A = n_actions_, S = steps_, D = manifest_.width;
    if (k < 1 || k > A) throw LocalizerError("beams must be between 1 and " + std::to_string(A) + ", got " + std::to_string(beams));
    if (n_queries < 1) return {};
    const int n = n_queries * k;
    DecoderStep& dec = backend_->decoder(n);
    dec.reset();
    for (int r = 0; r < n; ++r) std::copy(query + size_t(r / k) * D, query + size_t(r / k + 1) * D, dec.query() + size_t(r) * D);
    std::fill(dec.prev_action(), dec.prev_action() + n, 0);

    std::vector<int64_t> index(n, 0), paths(size_t(n) * S, 0), parents(n), action(n);
    std::vector<double> logps(size_t(n) * S, 0.0), scores(n, 0.0), logp(size_t(n) * A), scratch(A), total(size_t(n) * A);
    std::vector<int64_t> order(size_t(k) * A), new_paths(paths.size()), new_index(n);
    std::vector<double> new_logps(logps.size()), new_scores(n);
    double tile_ms = 0;
    std::vector<double> step_ms;
    for (int step = 0; step < S; ++step) {
        const auto t0 = Clock::now();
        const int64_t base = store_.region().level_offset(step);
        for (int r = 0; r < n; ++r) store_.read_row(base + index[r], dec.view() + size_t(r) * D);
        *dec.step() = step;
        const auto t1 = Clock::now();
        const float* logits = dec.run();
        const auto t2 = Clock::now();
        for (int r = 0; r < n; ++r) log_softmax(logits + size_t(r) * A, A, logp.data() + size_t(r) * A, scratch.data());
        const bool greedy = k == 1;
        if (greedy) {
            for (int r = 0; r < n; ++r) {
                const double* row = logp.data() + size_t(r) * A;
                action[r] = std::max_element(row, row + A) - row;  // the first maximum, as argmax
                scores[r] += row[action[r]];
                paths[size_t(r) * S + step] = action[r];
                logps[size_t(r) * S + step] = row[action[r]];
                index[r] = index[r] * A + action[r];
            }
        } else {
            for (int r = 0; r < n; ++r)
                for (int a = 0; a < A; ++a) {  // at step 0 every beam holds the same prefix: expand the first only
                    const bool dead = step == 0 && r % k != 0;
                    total[size_t(r) * A + a] = dead ? -std::numeric_limits<double>::infinity() : scores[r] + logp[size_t(r) * A + a];
                }
            for (int q = 0; q < n_queries; ++q) {
                const double* flat = total.data() + size_t(q) * k * A;  // [k * A], best first after a stable sort
                std::iota(order.begin(), order.end(), 0);
                std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return -flat[x] < -flat[y]; });
                for (int j = 0; j < k; ++j) {
                    const int r = q * k + j;
                    const int64_t top = order[j];
                    parents[r] = int64_t(q) * k + top / A;
                    action[r] = top % A;
                    new_scores[r] = flat[top];
                }
            }
            for (int r = 0; r < n; ++r) {
                const int64_t p = parents[r];
                std::copy(paths.begin() + p * S, paths.begin() + (p + 1) * S, new_paths.begin() + size_t(r) * S);
                std::copy(logps.begin() + p * S, logps.begin() + (p + 1) * S, new_logps.begin() + size_t(r) * S);
                new_paths[size_t(r) * S + step] = action[r];
                new_logps[size_t(r) * S + step] = logp[size_t(p) * A + action[r]];
                new_index[r] = index[p] * A + action[r];
            }
            paths.swap(new_paths);
            logps.swap(new_logps);
            index.swap(new_index);
            scores.swap(new_scores);
        }
        std::copy(action.begin(), action.end(), dec.prev_action());
        if (step < S - 1) dec.advance(greedy ? nullptr : parents.data());
        tile_ms += ms(t0, t1);
        step_ms.push_back(ms(t1, t2));  // the decoder call alone; the rest of the step is search bookkeeping
    }
    std::vector<LatLon> centres(n);
    for (int r = 0; r < n; ++r) centres[r] = store_.region().path_center(paths.data() + size_t(r) * S, S);
    const auto t_end = Clock::now();
    Timings timings;
    timings.tiles_ms = tile_ms;
    timings.decoder_steps_ms = step_ms;
    timings.decoder_ms = std::accumulate(step_ms.begin(), step_ms.end(), 0.0);
    timings.zoom_ms = ms(t_start, t_end);
    std::vector<Localization> results(n_queries);
    for (int q = 0; q < n_queries; ++q) {
        Localization& out = results[q];
        std::vector<Candidate> cands;
        for (int r = q * k; r < (q + 1) * k; ++r)
            cands.push_back({centres[r].lat, centres[r].lon, std::vector<int64_t>(paths.begin() + size_t(r) * S, paths.begin() + size_t(r + 1) * S),
                             scores[r], std::exp(scores[r])});
        const int best = q * k;
        out.latitude = cands[0].latitude;
        out.longitude = cands[0].longitude;
        out.path = cands[0].path;
        for (int s = 0; s < S; ++s) out.step_probs.push_back(std::exp(logps[size_t(best) * S + s]));
        out.confidence = cands[0].probability;
        if (k > 1) out.candidates = std::move(cands);
        out.timings = timings;
    }
    return results;
}

}  // namespace jzi
