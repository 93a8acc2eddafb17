// Unit tests of the C++ runtime's pieces: geometry (against numbers from runtime/geometry.py), float16,
// tile stores and bundles (valid, then each malformed field refused with its one line), images.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jzi/bundle.h"
#include "jzi/geometry.h"
#include "jzi/images.h"
#include "jzi/tiles.h"

using namespace jzi;
using json = nlohmann::json;

static int failures = 0, checks = 0;
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        ++checks;                                                                         \
        if (!(cond)) {                                                                    \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
            ++failures;                                                                   \
        }                                                                                 \
    } while (0)

// `body` must throw an Error of `kind` whose one-line message contains `part`.
static void refuses(const std::function<void()>& body, ErrorKind kind, const std::string& part, int line) {
    ++checks;
    try {
        body();
    } catch (const Error& e) {
        const std::string m = e.what();
        if (e.kind() == kind && m.find(part) != std::string::npos && m.find('\n') == std::string::npos) return;
        std::cerr << __FILE__ << ":" << line << ": wrong refusal: " << m << " (wanted '" << part << "')\n";
        ++failures;
        return;
    }
    std::cerr << __FILE__ << ":" << line << ": accepted, wanted a refusal with '" << part << "'\n";
    ++failures;
}
#define REFUSES(body, kind, part) refuses([&] { body; }, kind, part, __LINE__)

static fs::path temp_dir(const std::string& name) {
    const fs::path p = fs::temp_directory_path() / ("jzi-test-" + std::to_string(::getpid())) / name;
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

static void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// ---- geometry: values printed by runtime/geometry.py ---------------------------------------------
static void test_geometry() {
    Region r;
    const LatLon c = move_en({38.8936, -77.0116}, 2000.0, 0.0);  // Region.default(): bounds' centre
    r.center_lat = c.lat;
    r.center_lon = c.lon;
    CHECK(std::fabs(r.center_lat - 38.893597727601716) < 1e-12 && std::fabs(r.center_lon - -76.98851635800084) < 1e-12);
    const int64_t path[4] = {5, 10, 15, 0};
    const LatLon p = r.path_center(path, 4);
    CHECK(std::fabs(p.lat - 38.90043938723186) < 1e-12 && std::fabs(p.lon - -76.99730714824659) < 1e-12);
    CHECK(std::fabs(move({10.0, 179.9999}, 90.0, 100.0).lon - -179.99918782675462) < 1e-12);  // wraps past 180
    CHECK(std::fabs(distance_m({38.9, -77.0}, move({38.9, -77.0}, 37.0, 1234.5)) - 1234.5) < 1e-6);
    CHECK(r.total_views() == 4369 && r.level_offset(2) == 17 && r.n_views(3) == 4096);
    CHECK(r.path_index(path, 4) == ((5 * 16 + 10) * 16 + 15) * 16 + 0);
    CHECK(r.cell_size_m() == 39.0625);
}

static void test_half() {
    CHECK(half_to_float(0x3c00) == 1.0f && half_to_float(0xc000) == -2.0f && half_to_float(0x7bff) == 65504.0f);
    CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24) && std::isinf(half_to_float(0x7c00)) && std::isnan(half_to_float(0x7e00)));
    CHECK(half_to_float(0x8000) == 0.0f && std::signbit(half_to_float(0x8000)));
}

// ---- tile stores ---------------------------------------------------------------------------------
struct StoreSpec {
    Region region;
    int dim = 4;
};

static json levels(const Region& r) {
    json out = json::array();
    for (int l = 0; l < r.steps; ++l)
        out.push_back({{"level", l}, {"offset", r.level_offset(l)}, {"count", r.n_views(l)}, {"size_m", r.level_size_m(l)},
                       {"meters_per_pixel", r.meters_per_pixel(l)}});
    return out;
}

// A valid float32 store whose row i holds i + j/10 (then `values` applied), checksummed in blocks of
// `block_rows`, with `edit` applied to its index.
static fs::path make_store(const std::string& name, const std::function<void(json&, const fs::path&)>& edit = nullptr,
                           int block_rows = 17, const std::function<void(std::vector<float>&)>& values = nullptr) {
    Region r;
    r.center_lat = 38.9;
    r.center_lon = -77.0;
    r.steps = 2;
    r.view_px = 16;
    const int dim = 4;
    const fs::path dir = temp_dir(name);
    std::vector<float> data(size_t(r.total_views()) * dim);
    for (int64_t i = 0; i < r.total_views(); ++i)
        for (int j = 0; j < dim; ++j) data[size_t(i) * dim + j] = float(i) + j / 10.0f;
    if (values) values(data);
    std::ofstream(dir / "embeddings.f32", std::ios::binary).write(reinterpret_cast<const char*>(data.data()), data.size() * 4);
    json emb = {{"path", "embeddings.f32"}, {"dtype", "float32"}, {"byte_order", "little"}, {"shape", {r.total_views(), dim}},
                {"bytes", data.size() * 4}, {"sha256", sha256_file(dir / "embeddings.f32")}};
    emb["block_rows"] = block_rows;
    json blocks = json::array();
    for (int64_t s = 0; s < r.total_views(); s += block_rows) {
        const int64_t rows = std::min<int64_t>(block_rows, r.total_views() - s);
        blocks.push_back(sha256_bytes(data.data() + s * dim, size_t(rows) * dim * 4));
    }
    emb["block_sha256"] = blocks;
    json index = {{"format", "jzi-tiles"}, {"format_version", 2}, {"created", "today"},
                  {"region", {{"center_lat", r.center_lat}, {"center_lon", r.center_lon}, {"size_m", r.size_m}, {"grid", 4},
                              {"steps", 2}, {"view_px", 16}}},
                  {"grid", 4}, {"steps", 2}, {"view_px", 16}, {"dim", dim}, {"levels", levels(r)},
                  {"files", {{"embeddings", emb}}}, {"encoder_id", "enc"}};
    if (edit) edit(index, dir);
    write(dir / "tiles.json", index.dump());
    return dir;
}

static void test_tiles() {
    TileStore s(make_store("ok"));
    CHECK(s.total_views() == 17 && s.dim() == 4 && s.dtype() == "float32" && s.encoder_id() == "enc" && !s.has_pixels());
    float row[4];
    s.read_row(s.row(1, 5), row);
    CHECK(row[0] == 6.0f && row[3] == 6.0f + 0.3f);
    REFUSES(s.read_row(17, row), ErrorKind::TileStore, "row 17 is outside the store's 17 rows");

    using Edit = std::function<void(json&, const fs::path&)>;
    const std::vector<std::pair<Edit, std::string>> cases = {
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["path"] = "../../etc/passwd"; }, "plain file name"},
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["shape"] = {17, 3}; }, "shape"},
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["dtype"] = "float64"; }, "dtype"},
        {[](json& m, const fs::path&) { m["steps"] = 5; }, "region.grid/steps/view_px 4/2/16 disagree with grid/steps/view_px 4/5/16"},
        {[](json& m, const fs::path&) { m["dim"] = -3; }, "tiles.json: dim must be an integer in 1..65536, got -3"},
        {[](json& m, const fs::path&) { m["dim"] = true; }, "dim must be an integer in 1..65536, got True"},
        {[](json& m, const fs::path&) { m["levels"][1]["offset"] = 3; }, "levels"},
        {[](json& m, const fs::path&) { m["format_version"] = 99; }, "format_version"},
        {[](json& m, const fs::path&) { m.erase("encoder_id"); }, "encoder_id is missing"},
        {[](json& m, const fs::path&) { m["files"]["extra"] = {{"path", "x"}}; }, "files.extra.dtype is missing"},
        {[](json& m, const fs::path&) { m["files"]["extra"] = m["files"]["embeddings"]; }, "unknown file role 'extra'"},
        {[](json& m, const fs::path&) { m["region"]["center_lat"] = "north"; }, "region.center_lat must be a finite number in [-90, 90], got 'north'"},
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["byte_order"] = "big"; }, "byte_order must be one of ['little'], got 'big'"},
        {[](json& m, const fs::path&) {
             m["files"]["pixels"] = m["files"]["embeddings"];
             m["files"]["pixels"]["shape"] = {17, 99, 99, 3};
         }, "files.pixels.shape[1] must be a thumbnail size in 1..16, got 99"},
        {[](json&, const fs::path& d) { write(d / "embeddings.f32", std::string(100, '\0')); }, "truncated"},
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["block_rows"] = 0; }, "block_rows must be an integer in 1.."},
        {[](json& m, const fs::path&) { m["files"]["embeddings"]["block_rows"] = 4; }, "block_sha256 holds 1 digests, 17 rows in blocks of 4 need 5"},
        {[](json& m, const fs::path&) { m["format_version"] = 1; }, "format_version 1, this jzi reads 2 (a store without block checksums"},
        {[](json& m, const fs::path&) { m["format"] = "zip"; }, "not a jzi tile store index"},
    };
    int n = 0;
    for (const auto& [edit, why] : cases) REFUSES(TileStore(make_store("bad" + std::to_string(n++), edit)), ErrorKind::TileStore, why);
    const fs::path nojson = temp_dir("nojson");
    write(nojson / "tiles.json", "{nope");
    REFUSES(TileStore{nojson}, ErrorKind::TileStore, "not valid JSON");
    REFUSES(TileStore{temp_dir("empty.jzt.partial")}, ErrorKind::TileStore, "an unfinished build");
    REFUSES(TileStore{"/nonexistent/store.jzt"}, ErrorKind::TileStore, "not a tile store directory");

    // per-block checksums: a good store reads; an edited byte is refused in its block only
    const fs::path blocked = make_store("blocked", nullptr, 4);
    {
        TileStore b(blocked);
        for (int64_t r = 0; r < 17; ++r) b.read_row(r, row);
        CHECK(row[0] == 16.0f);
    }
    {
        std::fstream f(blocked / "embeddings.f32", std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(9 * 4 * 4 + 2);  // row 9: block 2 (rows 8..11)
        f.put('\x7f');
    }
    TileStore b(blocked);
    b.read_row(3, row);
    REFUSES(b.read_row(10, row), ErrorKind::TileStore, "row 10 of embeddings.f32 is in a block (rows 8..11) that does not match its checksum");
    b.read_row(16, row);

    // a NaN (under a good checksum) is refused when its block is first read, naming the row
    TileStore t(make_store("nan", nullptr, 4, [](std::vector<float>& v) { v[7 * 4 + 1] = std::nanf(""); }));
    t.read_row(3, row);
    REFUSES(t.read_row(6, row), ErrorKind::TileStore, "embedding row 7 holds NaN or Inf; rebuild the store");
    REFUSES(TileStore(make_store("nan0", nullptr, 17, [](std::vector<float>& v) { v[2] = INFINITY; })), ErrorKind::TileStore,
            "embedding row 0 holds NaN or Inf");
}

// ---- bundles ------------------------------------------------------------------------------------
// The decoder's inputs and outputs that width 8, 2 heads of 4, 1 layer, cache 8 and 16 actions imply.
static json decoder_io() {
    auto t = [](const char* name, json shape, const char* dtype) { return json{{"name", name}, {"shape", shape}, {"dtype", dtype}}; };
    const json cache = {"batch", 2, 8, 4};
    return {{"inputs", {t("query", {"batch", 8}, "float32"), t("view", {"batch", 8}, "float32"), t("prev_action", {"batch"}, "int64"),
                        t("step", json::array(), "int64"), t("past_key_values.0.key", cache, "float32"),
                        t("past_key_values.0.value", cache, "float32")}},
            {"outputs", {t("logits", {"batch", 16}, "float32"), t("present.0.key", cache, "float32"), t("present.0.value", cache, "float32")}}};
}

static fs::path make_bundle(const std::string& name, const std::function<void(json&, const fs::path&)>& edit = nullptr) {
    const fs::path dir = temp_dir(name);
    json files = json::object();
    for (const char* g : kGraphs) {
        write(dir / (std::string(g) + ".onnx"), std::string("graph ") + g);
        files[g] = {{"path", std::string(g) + ".onnx"}, {"sha256", sha256_file(dir / (std::string(g) + ".onnx"))}};
    }
    auto io = [](const char* in, json shape_in, const char* out) {
        return json{{"inputs", {{{"name", in}, {"shape", shape_in}, {"dtype", "uint8"}}}},
                    {"outputs", {{{"name", out}, {"shape", {"batch", 8}}, {"dtype", "float32"}}}}};
    };
    json m = {{"format", "jzi-bundle"}, {"format_version", 1},
              {"region", {{"center_lat", 38.9}, {"center_lon", -77.0}, {"size_m", 10000.0}, {"grid", 4}, {"steps", 4}, {"view_px", 32}}},
              {"steps", 4}, {"grid", 4}, {"n_actions", 16}, {"width", 8}, {"image_size", 32}, {"street_size", {32, 64}},
              {"decoder", {{"layers", 1}, {"heads", 2}, {"head_dim", 4}, {"cache_len", 8}}}, {"files", files},
              {"tensors", {{"view_encoder", io("images", {"batch", 32, 32, 3}, "embedding")},
                           {"street_encoder", io("images", {"batch", 32, 64, 3}, "embedding")},
                           {"decoder", decoder_io()}}},
              {"encoder_id", "enc"}, {"precision", "fp32"}};
    if (edit) edit(m, dir);
    write(dir / "manifest.json", m.dump());
    return dir;
}

static void test_bundle() {
    const Manifest m = load_manifest(make_bundle("bundle-ok"));
    CHECK(m.width == 8 && m.steps == 4 && m.layers == 1 && m.cache_len == 8 && m.encoder_id == "enc");
    CHECK(m.tensors.at("street_encoder").inputs[0].shape[0] == -1 && m.tensors.at("street_encoder").inputs[0].shape[2] == 64);
    CHECK(past_names(2)[3] == "past_key_values.1.value" && present_names(1)[0] == "present.0.key");
    CHECK(sha256_bytes("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    using Edit = std::function<void(json&, const fs::path&)>;
    const std::vector<std::pair<Edit, std::string>> cases = {
        {[](json&, const fs::path& d) { write(d / "decoder.onnx", "edited"); }, "does not match its sha256"},
        {[](json& m, const fs::path&) { m["files"]["decoder"]["path"] = "../outside.onnx"; }, "points outside the bundle"},
        {[](json& m, const fs::path&) { m["files"]["decoder"]["path"] = "/etc/hostname"; }, "points outside the bundle"},
        {[](json& m, const fs::path&) { m["files"].erase("decoder"); }, "no 'decoder' graph listed"},
        {[](json&, const fs::path& d) { fs::remove(d / "view_encoder.onnx"); }, "view_encoder.onnx is missing"},
        {[](json& m, const fs::path&) { m["format_version"] = 2; }, "format_version 2, this jzi reads 1"},
        {[](json& m, const fs::path&) { m.erase("tensors"); }, "manifest.json: tensors is missing"},
        {[](json& m, const fs::path&) { m["width"] = "wide"; }, "width must be an integer in 1..65536, got 'wide'"},
        {[](json& m, const fs::path&) { m["n_actions"] = 300; }, "n_actions must be an integer in 4..256, got 300"},
        {[](json& m, const fs::path&) { m["n_actions"] = 25; }, "n_actions is 25, a 4x4 grid has 16"},
        {[](json& m, const fs::path&) { m["decoder"]["cache_len"] = 4; }, "decoder.cache_len is 4, 4 steps need 8"},
        {[](json& m, const fs::path&) { m["tensors"]["decoder"]["outputs"][0]["shape"] = {"batch", 15}; },
         "tensors.decoder.outputs 'logits' is float32 ['batch', 15], the manifest's sizes imply float32 ['batch', 16]"},
        {[](json& m, const fs::path&) { m["tensors"]["decoder"]["inputs"].erase(4); }, "tensors.decoder.inputs names disagree"},
        {[](json& m, const fs::path&) { m["files"]["decoder"]["sha256"] = "abc"; }, "files.decoder.sha256 must be 64 lowercase hex digits"},
        // the files are hashed concurrently, yet the first problem in the manifest's order (here decoder,
        // street_encoder, view_encoder) is the one named, as Python's reader names it
        {[](json&, const fs::path& d) {
             write(d / "street_encoder.onnx", "edited");
             write(d / "view_encoder.onnx", "edited too");
         },
         "street_encoder.onnx does not match its sha256"},
        {[](json&, const fs::path& d) {
             write(d / "decoder.onnx", "edited");
             fs::remove(d / "view_encoder.onnx");
         },
         "decoder.onnx does not match its sha256"},
        {[](json&, const fs::path& d) {
             fs::remove(d / "street_encoder.onnx");
             write(d / "view_encoder.onnx", "");
         },
         "street_encoder.onnx is missing"},
    };
    int n = 0;
    for (const auto& [edit, why] : cases) REFUSES(load_manifest(make_bundle("bundle-bad" + std::to_string(n++), edit)), ErrorKind::Bundle, why);
    REFUSES(load_manifest(temp_dir("nomanifest")), ErrorKind::Bundle, "no manifest.json; is this a jzi bundle");
    REFUSES(load_manifest("/nonexistent-bundle"), ErrorKind::Bundle, "/nonexistent-bundle: does not exist");
    REFUSES(load_manifest(make_bundle("bundle-file") / "manifest.json"), ErrorKind::Bundle, "not a bundle directory");
    load_manifest(make_bundle("bundle-noverify", [](json&, const fs::path& d) { write(d / "decoder.onnx", "edited"); }), false);
}

// A graph cut short while it is being hashed gives the mismatch line Python's reader gives (the digest
// of what was read), never SIGBUS (a memory map of a shrinking file faults). Cut at a few moments; the
// cut at 0 ms lands before or during the hash, so at least one load must be refused.
static void test_bundle_cut_while_hashed() {
    const std::string data(size_t(32) << 20, 'x');
    const std::string digest = sha256_bytes(data.data(), data.size());
    int refused = 0;
    for (int delay_ms = 0; delay_ms < 4; ++delay_ms) {
        const fs::path dir = make_bundle("bundle-cut" + std::to_string(delay_ms), [&](json& m, const fs::path& d) {
            write(d / "decoder.onnx", data);
            m["files"]["decoder"]["sha256"] = digest;
        });
        std::thread cut([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
            fs::resize_file(dir / "decoder.onnx", 4096);
        });
        try {
            load_manifest(dir);
        } catch (const Error& e) {
            ++refused;
            CHECK(e.kind() == ErrorKind::Bundle && std::string(e.what()) == dir.string() + ": decoder.onnx does not match its sha256 in "
                                                                                           "the manifest (corrupt or edited)");
        }
        cut.join();
    }
    CHECK(refused > 0);
}

// ---- images -------------------------------------------------------------------------------------
static std::vector<uint8_t> encode(const std::string& ext, const cv::Mat& bgr, std::vector<int> params = {}) {
    std::vector<uint8_t> out;
    CHECK(cv::imencode(ext, bgr, out, params));
    return out;
}

static cv::Mat two_colour_bgr(int h, int w) {  // left half red, right half blue (as RGB)
    cv::Mat img(h, w, CV_8UC3, cv::Scalar(0, 0, 255));
    img(cv::Rect(w / 2, 0, w - w / 2, h)).setTo(cv::Scalar(255, 0, 0));
    return img;
}

static void test_images() {
    for (const char* ext : {".jpg", ".png", ".bmp", ".tiff", ".webp"}) {
        const auto data = encode(ext, two_colour_bgr(24, 40));
        const auto size = header_size(data.data(), data.size());
        CHECK(size && size->first.value() == 40 && size->second.value() == 24);
        const cv::Mat rgb = decode_image(data.data(), data.size());
        CHECK(rgb.rows == 24 && rgb.cols == 40 && rgb.type() == CV_8UC3);
        CHECK(rgb.at<cv::Vec3b>(12, 5)[0] > 200 && rgb.at<cv::Vec3b>(12, 5)[2] < 60);  // red left, in RGB order
        CHECK(rgb.at<cv::Vec3b>(12, 35)[2] > 200 && rgb.at<cv::Vec3b>(12, 35)[0] < 60);
    }
    // EXIF orientation 6 (turn clockwise to display): an APP1 segment with only that tag after SOI
    auto jpeg = encode(".jpg", two_colour_bgr(20, 40), {cv::IMWRITE_JPEG_QUALITY, 100});
    const uint8_t tiff[] = {'I', 'I', '*', 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
    std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, uint8_t(2 + 6 + sizeof(tiff)), 'E', 'x', 'i', 'f', 0, 0};
    app1.insert(app1.end(), tiff, tiff + sizeof(tiff));
    jpeg.insert(jpeg.begin() + 2, app1.begin(), app1.end());
    const cv::Mat turned = decode_image(jpeg.data(), jpeg.size());
    CHECK(turned.rows == 40 && turned.cols == 20 && turned.at<cv::Vec3b>(5, 10)[0] > 200 && turned.at<cv::Vec3b>(35, 10)[2] > 200);

    cv::Mat grey(10, 10, CV_8U);
    for (int i = 0; i < 100; ++i) grey.data[i] = uint8_t(2 * i);
    const auto g = encode(".png", grey);
    const cv::Mat gr = decode_image(g.data(), g.size());
    CHECK(gr.channels() == 3 && gr.at<cv::Vec3b>(9, 9)[0] == 198 && gr.at<cv::Vec3b>(9, 9)[2] == 198);
    cv::Mat deep(4, 4, CV_16UC3, cv::Scalar(65535, 32896, 128));  // BGR 16-bit
    const auto d = encode(".png", deep);
    const cv::Mat dr = decode_image(d.data(), d.size());
    CHECK(dr.at<cv::Vec3b>(0, 0) == cv::Vec3b(0, 128, 255));  // (x + 128) // 257, in RGB order
    cv::Mat rgba(3, 3, CV_8UC4, cv::Scalar(1, 2, 3, 4));
    CHECK(to_rgb8(rgba).at<cv::Vec3b>(1, 1) == cv::Vec3b(1, 2, 3));

    const auto big = encode(".png", cv::Mat(60, 60, CV_8UC3, cv::Scalar::all(9)));
    REFUSES(decode_image(big.data(), big.size(), 3599), ErrorKind::Image, "60x60 pixels is over the cap of 3599 (decompression bomb?)");
    CHECK(decode_image(big.data(), big.size(), 3600).rows == 60);
    REFUSES(decode_image(nullptr, 0), ErrorKind::Image, "empty file");
    const std::string junk = "this is not an image at all";
    REFUSES(decode_image(reinterpret_cast<const uint8_t*>(junk.data()), junk.size()), ErrorKind::Image, "not a readable image");
    REFUSES(decode_image(jpeg.data(), 10), ErrorKind::Image, "JPEG");
    const uint8_t png_head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0};
    REFUSES(decode_image(png_head, sizeof(png_head)), ErrorKind::Image, "PNG without an IHDR header");
    const std::string comment = "P6\n# a comment without its line end";  // looped forever in Python once
    REFUSES(decode_image(reinterpret_cast<const uint8_t*>(comment.data()), comment.size()), ErrorKind::Image, "truncated or corrupt PNM header");
    const std::string ppm = "P6\n640 480\n255\n";
    const auto ppm_size = header_size(reinterpret_cast<const uint8_t*>(ppm.data()), ppm.size());
    CHECK(ppm_size && ppm_size->first.value() == 640 && ppm_size->second.value() == 480);
    // sizes no int64_t holds are carried exactly, as Python's int carries them (BigTIFF LONG8, text headers)
    std::vector<uint8_t> bigtiff = {'I', 'I', '+', 0, 8, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0};
    for (uint16_t tag : {256, 257}) {
        const uint8_t entry[20] = {uint8_t(tag), uint8_t(tag >> 8), 16, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                                   0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, uint8_t(tag == 256 ? 0xFF : 0x7F)};
        bigtiff.insert(bigtiff.end(), entry, entry + 20);
    }
    const auto tiff_wh = header_size(bigtiff.data(), bigtiff.size());
    CHECK(tiff_wh && tiff_wh->first.str() == "18446744073709551615" && !tiff_wh->first.fits_int64());
    CHECK(tiff_wh->second.str() == "9223372036854775807" && tiff_wh->second.fits_int64());
    REFUSES(decode_image(bigtiff.data(), bigtiff.size()), ErrorKind::Image,
            "18446744073709551615x9223372036854775807 pixels is over the cap of 100000000 (decompression bomb?)");
    const std::string pam = "P7\nWIDTH 000123456789012345678901234567890\nHEIGHT -0\nENDHDR\n";
    REFUSES(decode_image(reinterpret_cast<const uint8_t*>(pam.data()), pam.size()), ErrorKind::Image,
            "PNM header gives an empty size 123456789012345678901234567890x0");
    const std::string hdr = "#?RADIANCE\n\n-Y 2 +X " + std::string(4301, '7') + "\n";
    REFUSES(decode_image(reinterpret_cast<const uint8_t*>(hdr.data()), hdr.size()), ErrorKind::Image, "truncated or corrupt HDR header");
    CHECK(HeaderInt::parse(" -1_0 ")->value() == -10 && !HeaderInt::parse("1__0") && !HeaderInt::parse("_1"));
    CHECK(HeaderInt::parse("-9223372036854775808")->fits_int64() && !HeaderInt::parse("9223372036854775808")->fits_int64());
    REFUSES(read_image("/nonexistent/photo.jpg"), ErrorKind::Image, "/nonexistent/photo.jpg: cannot read");
    REFUSES(read_image(fs::temp_directory_path()), ErrorKind::Image, "is a directory");

    std::vector<uint8_t> street(16 * 32 * 3);
    street_input(cv::Mat(7, 9, CV_8UC3, cv::Scalar(5, 6, 7)), 16, street.data());
    CHECK(street[0] == 5 && street[street.size() - 1] == 7);
}

int main() {
    test_geometry();
    test_half();
    test_tiles();
    test_bundle();
    test_bundle_cut_while_hashed();
    test_images();
    fs::remove_all(fs::temp_directory_path() / ("jzi-test-" + std::to_string(::getpid())));
    std::cout << checks - failures << "/" << checks << " checks passed\n";
    return failures ? 1 : 0;
}
