/* jzi C API: localize street photos with a jzi bundle and tile store, from C, Rust, Go or ROS code.
 *
 *     jzi_localizer* loc = NULL;
 *     jzi_options opt;
 *     jzi_options_init(&opt);                                   backend "auto", all cores, verify on
 *     if (jzi_localizer_create("bundle", "region.jzt", &opt, &loc) != JZI_OK) {
 *         fprintf(stderr, "%s\n", jzi_last_error());              one line saying why
 *         return 1;
 *     }
 *     jzi_result r;
 *     if (jzi_localize_file(loc, "photo.jpg", 1, &r) == JZI_OK)  beams = 1: greedy
 *         printf("%.6f, %.6f\n", r.latitude, r.longitude);
 *     jzi_result_clear(&r);
 *     jzi_localizer_destroy(loc);
 *
 * Handles are opaque; results are plain structs; every call returns a status and, on failure,
 * jzi_last_error() holds one line for this thread. No C++ exception crosses this boundary.
 * A localizer may be shared by threads (calls on it are serialised).
 */
#ifndef JZI_JZI_H
#define JZI_JZI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define JZI_API __declspec(dllexport)
#else
#define JZI_API __attribute__((visibility("default")))
#endif

#define JZI_MAX_STEPS 12

typedef enum jzi_status {
    JZI_OK = 0,
    JZI_ERR_BUNDLE = 1,    /* the bundle is missing, malformed or edited */
    JZI_ERR_TILES = 2,     /* the tile store is missing, malformed or edited */
    JZI_ERR_IMAGE = 3,     /* the photo cannot be read */
    JZI_ERR_LOCALIZER = 4, /* bundle and store do not fit together, or a bad search setting */
    JZI_ERR_BACKEND = 5,   /* the inference backend is not available or failed */
    JZI_ERR_ARGUMENT = 6,  /* a bad argument (NULL pointer, size) */
    JZI_ERR_IO = 7,        /* a file cannot be read */
    JZI_ERR_INTERNAL = 8   /* a bug: please report it */
} jzi_status;

typedef struct jzi_localizer jzi_localizer;

typedef struct jzi_options {
    const char* backend; /* "auto", "ort-cpu", "ort-cuda", "ort-trt" or "tensorrt" */
    int threads;         /* <= 0: all usable cores */
    int verify_bundle;   /* non-zero: check the bundle files' sha256 at start-up */
    int64_t max_pixels;  /* photos with more pixels are refused before decoding */
} jzi_options;

typedef struct jzi_candidate {
    double latitude, longitude;
    int32_t path[JZI_MAX_STEPS];
    double score;       /* sum of the chosen cells' log-probabilities */
    double probability; /* exp(score) */
} jzi_candidate;

typedef struct jzi_timings { /* milliseconds */
    double read_ms, preprocess_ms, encoder_ms, tiles_ms, decoder_ms, zoom_ms, total_ms;
    double decoder_steps_ms[JZI_MAX_STEPS];
    int32_t batch;
} jzi_timings;

typedef struct jzi_result {
    double latitude, longitude;
    int32_t steps; /* entries used in path and step_probs */
    int32_t path[JZI_MAX_STEPS];
    double step_probs[JZI_MAX_STEPS];
    double confidence;
    int32_t n_candidates;     /* beams > 1: the top cells, best first; 0 otherwise */
    jzi_candidate* candidates; /* owned by the result: free with jzi_result_clear */
    jzi_timings timings;
} jzi_result;

JZI_API const char* jzi_version(void);
JZI_API const char* jzi_last_error(void);
JZI_API const char* jzi_status_name(jzi_status status);

JZI_API void jzi_options_init(jzi_options* options);
JZI_API jzi_status jzi_localizer_create(const char* bundle_dir, const char* tiles_dir, const jzi_options* options,
                                        jzi_localizer** out);
JZI_API void jzi_localizer_destroy(jzi_localizer* localizer);
/* "ort-cpu (CPUExecutionProvider, 2 threads); store region.jzt: ..." (valid until the next call). */
JZI_API const char* jzi_localizer_describe(jzi_localizer* localizer);
/* Model sizes: width D of the embeddings, image_size S, steps, n_actions. */
JZI_API jzi_status jzi_localizer_info(const jzi_localizer* localizer, int* width, int* image_size, int* steps, int* n_actions);

/* One photo: a file, encoded bytes (JPEG, PNG, ...), or pixels (uint8, rows of width*channels
 * bytes, channels 1 grey, 3 RGB or 4 RGBA). beams 1 is greedy, up to n_actions. */
JZI_API jzi_status jzi_localize_file(jzi_localizer* localizer, const char* path, int beams, jzi_result* out);
JZI_API jzi_status jzi_localize_encoded(jzi_localizer* localizer, const uint8_t* data, size_t size, int beams, jzi_result* out);
JZI_API jzi_status jzi_localize_rgb(jzi_localizer* localizer, const uint8_t* pixels, int height, int width, int channels,
                                    int beams, jzi_result* out);
/* The decoder loop alone from street embeddings query [n_queries, width] (float32): out[n_queries]. */
JZI_API jzi_status jzi_zoom(jzi_localizer* localizer, const float* query, int n_queries, int beams, jzi_result* out);

/* Frees a result's candidates and zeroes it; safe on a zeroed or already cleared result. */
JZI_API void jzi_result_clear(jzi_result* result);

#ifdef __cplusplus
}
#endif

#endif /* JZI_JZI_H */
