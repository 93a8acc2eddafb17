/* The C API from plain C: status codes and messages on bad input; with arguments BUNDLE STORE PHOTO,
 * a greedy and a beam-search localization through every entry point, checked against each other. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jzi/jzi.h"

static int failures = 0;
#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                       \
        }                                                                     \
    } while (0)

static unsigned char* read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char* data = malloc(*size);
    if (fread(data, 1, *size, f) != *size) *size = 0;
    fclose(f);
    return data;
}

static void error_paths(void) {
    jzi_localizer* loc = (jzi_localizer*)1;
    jzi_options opt;
    jzi_options_init(&opt);
    CHECK(strcmp(opt.backend, "auto") == 0 && opt.verify_bundle == 1 && opt.max_pixels == 100000000);
    CHECK(jzi_localizer_create(NULL, "t", &opt, &loc) == JZI_ERR_ARGUMENT);
    CHECK(strstr(jzi_last_error(), "bundle_dir is NULL") != NULL);
    CHECK(jzi_localizer_create("no-such-bundle", "no-such.jzt", &opt, &loc) == JZI_ERR_BUNDLE);
    CHECK(loc == NULL);
    CHECK(strcmp(jzi_last_error(), "no-such-bundle: does not exist") == 0);
    CHECK(strcmp(jzi_status_name(JZI_ERR_TILES), "tile store error") == 0);
    jzi_result r;
    memset(&r, 0, sizeof(r));
    CHECK(jzi_localize_file(NULL, "x.jpg", 1, &r) == JZI_ERR_ARGUMENT);
    jzi_result_clear(&r);
    jzi_result_clear(NULL);
    jzi_localizer_destroy(NULL);
    CHECK(strlen(jzi_version()) > 0);
}

static void end_to_end(const char* bundle, const char* store, const char* photo) {
    jzi_localizer* loc = NULL;
    jzi_options opt;
    jzi_options_init(&opt);
    opt.threads = 1;
    if (jzi_localizer_create(bundle, store, &opt, &loc) != JZI_OK) {
        fprintf(stderr, "create: %s\n", jzi_last_error());
        ++failures;
        return;
    }
    int width = 0, size = 0, steps = 0, actions = 0;
    CHECK(jzi_localizer_info(loc, &width, &size, &steps, &actions) == JZI_OK && width > 0 && steps >= 1 && actions >= 4);
    CHECK(strstr(jzi_localizer_describe(loc), "store") != NULL);

    jzi_result a, b, beam;
    CHECK(jzi_localize_file(loc, photo, 1, &a) == JZI_OK);
    CHECK(a.steps == steps && a.n_candidates == 0 && a.candidates == NULL);
    CHECK(fabs(a.latitude) <= 90 && a.confidence > 0 && a.confidence <= 1);
    double product = 1;
    for (int s = 0; s < a.steps; ++s) product *= a.step_probs[s];
    CHECK(fabs(product - a.confidence) < 1e-9);
    size_t n = 0;
    unsigned char* data = read_file(photo, &n);
    CHECK(data != NULL && jzi_localize_encoded(loc, data, n, 1, &b) == JZI_OK);
    CHECK(b.latitude == a.latitude && b.longitude == a.longitude && memcmp(a.path, b.path, sizeof(a.path)) == 0);
    CHECK(jzi_localize_file(loc, photo, actions + 1, &beam) == JZI_ERR_LOCALIZER);
    CHECK(strstr(jzi_last_error(), "beams must be between 1 and") != NULL);
    CHECK(jzi_localize_file(loc, photo, 3, &beam) == JZI_OK);
    CHECK(beam.n_candidates == 3 && beam.candidates != NULL);
    CHECK(beam.candidates[0].score >= beam.candidates[1].score && beam.candidates[1].score >= beam.candidates[2].score);
    CHECK(beam.latitude == beam.candidates[0].latitude);
    CHECK(jzi_localize_encoded(loc, (const unsigned char*)"garbage", 7, 1, &b) == JZI_ERR_IMAGE);
    CHECK(strstr(jzi_last_error(), "not a readable image") != NULL);
    CHECK(jzi_localize_file(loc, "no-such-photo.jpg", 1, &b) == JZI_ERR_IMAGE);

    /* the zoom loop alone from a query embedding: two rows at once give the rows' own answers */
    float* query = calloc((size_t)width * 2, sizeof(float));
    for (int i = 0; i < 2 * width; ++i) query[i] = (float)sin(0.37 * i);
    jzi_result two[2], one;
    CHECK(jzi_zoom(loc, query, 2, 1, two) == JZI_OK);
    CHECK(jzi_zoom(loc, query + width, 1, 1, &one) == JZI_OK);
    CHECK(memcmp(two[1].path, one.path, sizeof(one.path)) == 0 && fabs(two[1].confidence - one.confidence) < 1e-6);
    free(query);
    free(data);
    jzi_result_clear(&a);
    jzi_result_clear(&b);
    jzi_result_clear(&beam);
    jzi_result_clear(&two[0]);
    jzi_result_clear(&two[1]);
    jzi_result_clear(&one);
    jzi_localizer_destroy(loc);
}

int main(int argc, char** argv) {
    error_paths();
    if (argc == 4) end_to_end(argv[1], argv[2], argv[3]);
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    else printf("c api: all checks passed%s\n", argc == 4 ? " (with the end-to-end run)" : "");
    return failures ? 1 : 0;
}
