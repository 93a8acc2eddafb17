// The C API: opaque handles, plain structs, status codes and a per-thread message; nothing throws out.
#include "jzi/jzi.h"

#include <cstring>
#include <new>
#include <string>

#include "jzi/localizer.h"

#ifndef JZI_VERSION
#define JZI_VERSION "0.1.0"
#endif

struct jzi_localizer {
    std::unique_ptr<jzi::Localizer> impl;
    int64_t max_pixels = jzi::kMaxPixels;
    std::string description;
};

namespace {
thread_local std::string last_error;

jzi_status fail(jzi_status status, const std::string& message) {
    last_error = message;
    return status;
}

// Run `body`, turning every exception into a status and a message.
template <class F>
jzi_status guarded(F&& body) {
    try {
        body();
        last_error.clear();
        return JZI_OK;
    } catch (const jzi::Error& e) {
        return fail(static_cast<jzi_status>(static_cast<int>(e.kind())), e.what());
    } catch (const std::bad_alloc&) {
        return fail(JZI_ERR_INTERNAL, "out of memory");
    } catch (const std::filesystem::filesystem_error& e) {
        return fail(JZI_ERR_IO, e.what());
    } catch (const std::exception& e) {
        return fail(JZI_ERR_INTERNAL, e.what());
    } catch (...) {
        return fail(JZI_ERR_INTERNAL, "unknown error");
    }
}

void fill(const jzi::Localization& r, jzi_result* out) {
    std::memset(out, 0, sizeof(*out));
    out->latitude = r.latitude;
    out->longitude = r.longitude;
    out->steps = static_cast<int32_t>(r.path.size());
    for (size_t s = 0; s < r.path.size() && s < JZI_MAX_STEPS; ++s) {
        out->path[s] = static_cast<int32_t>(r.path[s]);
        out->step_probs[s] = r.step_probs[s];
        out->timings.decoder_steps_ms[s] = s < r.timings.decoder_steps_ms.size() ? r.timings.decoder_steps_ms[s] : 0.0;
    }
    out->confidence = r.confidence;
    const auto& t = r.timings;
    out->timings.read_ms = t.read_ms;
    out->timings.preprocess_ms = t.preprocess_ms;
    out->timings.encoder_ms = t.encoder_ms;
    out->timings.tiles_ms = t.tiles_ms;
    out->timings.decoder_ms = t.decoder_ms;
    out->timings.zoom_ms = t.zoom_ms;
    out->timings.total_ms = t.total_ms;
    out->timings.batch = t.batch;
    if (!r.candidates.empty()) {
        out->candidates = new jzi_candidate[r.candidates.size()]();
        out->n_candidates = static_cast<int32_t>(r.candidates.size());
        for (size_t i = 0; i < r.candidates.size(); ++i) {
            const auto& c = r.candidates[i];
            auto& o = out->candidates[i];
            o.latitude = c.latitude;
            o.longitude = c.longitude;
            for (size_t s = 0; s < c.path.size() && s < JZI_MAX_STEPS; ++s) o.path[s] = static_cast<int32_t>(c.path[s]);
            o.score = c.score;
            o.probability = c.probability;
        }
    }
}

void need(const void* p, const char* what) {
    if (!p) throw jzi::ArgumentError(std::string(what) + " is NULL");
}
}  // namespace

extern "C" {

const char* jzi_version(void) { return JZI_VERSION; }
const char* jzi_last_error(void) { return last_error.c_str(); }

const char* jzi_status_name(jzi_status status) {
    switch (status) {
        case JZI_OK: return "ok";
        case JZI_ERR_BUNDLE: return "bundle error";
        case JZI_ERR_TILES: return "tile store error";
        case JZI_ERR_IMAGE: return "image error";
        case JZI_ERR_LOCALIZER: return "localizer error";
        case JZI_ERR_BACKEND: return "backend unavailable";
        case JZI_ERR_ARGUMENT: return "bad argument";
        case JZI_ERR_IO: return "i/o error";
        case JZI_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

void jzi_options_init(jzi_options* o) {
    if (!o) return;
    o->backend = "auto";
    o->threads = 0;
    o->verify_bundle = 1;
    o->max_pixels = jzi::kMaxPixels;
}

jzi_status jzi_localizer_create(const char* bundle_dir, const char* tiles_dir, const jzi_options* options, jzi_localizer** out) {
    return guarded([&] {
        need(bundle_dir, "bundle_dir");
        need(tiles_dir, "tiles_dir");
        need(out, "out");
        *out = nullptr;
        jzi_options o;
        jzi_options_init(&o);
        if (options) o = *options;
        if (o.max_pixels < 1) throw jzi::ArgumentError("max_pixels must be positive");
        jzi::LocalizerOptions lo;
        lo.backend = o.backend ? o.backend : "auto";
        lo.threads = o.threads;
        lo.verify_bundle = o.verify_bundle != 0;
        auto handle = std::make_unique<jzi_localizer>();
        handle->impl = std::make_unique<jzi::Localizer>(bundle_dir, tiles_dir, lo);
        handle->max_pixels = o.max_pixels;
        *out = handle.release();
    });
}

void jzi_localizer_destroy(jzi_localizer* localizer) { delete localizer; }

const char* jzi_localizer_describe(jzi_localizer* loc) {
    if (!loc) return "";
    loc->description = loc->impl->describe();
    return loc->description.c_str();
}

jzi_status jzi_localizer_info(const jzi_localizer* loc, int* width, int* image_size, int* steps, int* n_actions) {
    return guarded([&] {
        need(loc, "localizer");
        const auto& m = loc->impl->manifest();
        if (width) *width = m.width;
        if (image_size) *image_size = m.image_size;
        if (steps) *steps = m.steps;
        if (n_actions) *n_actions = m.n_actions;
    });
}

jzi_status jzi_localize_file(jzi_localizer* loc, const char* path, int beams, jzi_result* out) {
    if (out) std::memset(out, 0, sizeof(*out));
    return guarded([&] {
        need(loc, "localizer");
        need(path, "path");
        need(out, "out");
        fill(loc->impl->localize_file(path, beams, loc->max_pixels), out);
    });
}

jzi_status jzi_localize_encoded(jzi_localizer* loc, const uint8_t* data, size_t size, int beams, jzi_result* out) {
    if (out) std::memset(out, 0, sizeof(*out));
    return guarded([&] {
        need(loc, "localizer");
        need(out, "out");
        if (size) need(data, "data");
        cv::Mat rgb = jzi::decode_image(data, size, loc->max_pixels);
        fill(loc->impl->localize_batch({rgb}, beams).at(0), out);
    });
}

jzi_status jzi_localize_rgb(jzi_localizer* loc, const uint8_t* pixels, int height, int width, int channels, int beams, jzi_result* out) {
    if (out) std::memset(out, 0, sizeof(*out));
    return guarded([&] {
        need(loc, "localizer");
        need(pixels, "pixels");
        need(out, "out");
        if (height < 1 || width < 1 || (channels != 1 && channels != 3 && channels != 4))
            throw jzi::ImageError("pixels must be [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA with H, W >= 1");
        if (int64_t(height) * width > loc->max_pixels)
            throw jzi::ImageError(std::to_string(width) + "x" + std::to_string(height) + " pixels is over the cap of " +
                                  std::to_string(loc->max_pixels));
        const cv::Mat view(height, width, CV_MAKETYPE(CV_8U, channels), const_cast<uint8_t*>(pixels));
        fill(loc->impl->localize_batch({jzi::to_rgb8(view)}, beams).at(0), out);
    });
}

jzi_status jzi_zoom(jzi_localizer* loc, const float* query, int n_queries, int beams, jzi_result* out) {
    return guarded([&] {
        need(loc, "localizer");
        need(query, "query");
        need(out, "out");
        if (n_queries < 1) throw jzi::ArgumentError("n_queries must be at least 1");
        const auto results = loc->impl->zoom(query, n_queries, beams);
        for (int q = 0; q < n_queries; ++q) fill(results[q], out + q);
    });
}

void jzi_result_clear(jzi_result* result) {
    if (!result) return;
    delete[] result->candidates;
    std::memset(result, 0, sizeof(*result));
}

}  // extern "C"
