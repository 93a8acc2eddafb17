// jzi-run-native: localize street photos, with jzi-run's arguments, output and exit codes.
//
//     jzi-run-native --engine BUNDLE --tiles REGION.jzt query.jpg [more.jpg | folder/ | list.csv]
//                    [--beams k] [--batch n] [--json] [--geojson out.geojson]
//
// Prints "photo  latitude, longitude" per photo. A CSV lists photos in a `path` column (relative to the
// CSV) or in the authors' dataset format (`image_id` with streetview/images/{id}_undistorted.jpg beside
// the CSV or one folder up); with latitude/longitude columns each line also gets its error in metres and
// a R@40/50/100m summary follows. A photo that cannot be read is one line on stderr and the rest go on;
// the exit status is then 1. Bad setup: one line, exit 1; bad arguments: usage, exit 2.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "jzi/backend.h"
#include "jzi/localizer.h"
#include "jzi/viz.h"

namespace {
using jzi::fs::path;
using Json = nlohmann::ordered_json;  // keys in jzi-run's order

const char* kProg = "jzi-run-native";
const int kRecallM[] = {40, 50, 100};

const char* kUsage =
    "usage: jzi-run-native [-h] --engine BUNDLE --tiles REGION.jzt [--beams BEAMS] [--batch BATCH]\n"
    "                      [--backend {auto,ort-cpu,ort-cuda,ort-trt,tensorrt}] [--threads THREADS] [--json]\n"
    "                      [--geojson OUT] [--viz OUT.png] [--source IMAGERY] [--max-pixels MAX_PIXELS] [--no-verify]\n"
    "                      inputs [inputs ...]\n";

const char* kHelp =
    "\nLocalize street photos with a jzi bundle and tile store (the C++ runtime).\n\n"
    "positional arguments:\n"
    "  inputs                photos, folders of photos, or CSV lists (with truth if known)\n\n"
    "options:\n"
    "  -h, --help            show this help message and exit\n"
    "  --engine BUNDLE       model bundle made by jzi-export\n"
    "  --tiles REGION.jzt    tile store made by jzi-tiles build\n"
    "  --beams BEAMS         beam search width; >1 also reports the top-k cells (1)\n"
    "  --batch BATCH         photos per encoder call (1)\n"
    "  --backend {auto,ort-cpu,ort-cuda,ort-trt,tensorrt}\n"
    "                        inference backend (auto)\n"
    "  --threads THREADS     CPU threads for ONNX Runtime (default: all cores)\n"
    "  --json                print one JSON document instead of lines\n"
    "  --geojson OUT         write the answers (and truths) as a GeoJSON FeatureCollection\n"
    "  --viz OUT.png         draw the zoom path of the first photo (from the store's thumbnails)\n"
    "  --source IMAGERY      imagery for --viz when the store has no thumbnails (jzi-run only)\n"
    "  --max-pixels MAX_PIXELS\n"
    "                        refuse larger photos (100000000)\n"
    "  --no-verify           skip the bundle checksum check at start-up\n";

struct UsageError {
    std::string message;
};

struct Args {
    std::vector<std::string> inputs;
    std::string engine, tiles, backend = "auto", geojson, viz, source;
    int beams = 1, batch = 1, threads = 0;
    int64_t max_pixels = jzi::kMaxPixels;
    bool json = false, no_verify = false;
};

int64_t parse_int(const std::string& flag, const std::string& value) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno) throw UsageError{"argument " + flag + ": invalid int value: '" + value + "'"};
    return v;
}

Args parse_args(int argc, char** argv) {
    Args a;
    bool engine = false, tiles = false, only_positional = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (only_positional || arg.size() < 2 || arg[0] != '-') {
            a.inputs.push_back(arg);
            continue;
        }
        if (arg == "--") {
            only_positional = true;
            continue;
        }
        if (arg == "-h" || arg == "--help") {
            std::cout << kUsage << kHelp;
            std::exit(0);
        }
        std::optional<std::string> inline_value;
        if (const auto eq = arg.find('='); eq != std::string::npos) {
            inline_value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
        }
        if (arg == "--json" || arg == "--no-verify") {
            if (inline_value) throw UsageError{"argument " + arg + ": ignored explicit argument '" + *inline_value + "'"};
            (arg == "--json" ? a.json : a.no_verify) = true;
            continue;
        }
        static const char* valued[] = {"--engine", "--tiles", "--beams", "--batch", "--backend", "--threads",
                                       "--geojson", "--viz", "--source", "--max-pixels"};
        bool known = false;
        for (const char* v : valued) known = known || arg == v;
        if (!known) throw UsageError{"unrecognized arguments: " + std::string(argv[i])};
        std::string value;
        if (inline_value) {
            value = *inline_value;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            throw UsageError{"argument " + arg + ": expected one argument"};
        }
        if (arg == "--engine") a.engine = value, engine = true;
        else if (arg == "--tiles") a.tiles = value, tiles = true;
        else if (arg == "--beams") a.beams = static_cast<int>(parse_int(arg, value));
        else if (arg == "--batch") a.batch = static_cast<int>(parse_int(arg, value));
        else if (arg == "--threads") a.threads = static_cast<int>(parse_int(arg, value));
        else if (arg == "--max-pixels") a.max_pixels = parse_int(arg, value);
        else if (arg == "--geojson") a.geojson = value;
        else if (arg == "--viz") a.viz = value;
        else if (arg == "--source") a.source = value;
        else if (arg == "--backend") {
            bool ok = value == "auto";
            for (const char* b : jzi::kBackends) ok = ok || value == b;
            if (!ok)
                throw UsageError{"argument --backend: invalid choice: '" + value +
                                 "' (choose from 'auto', 'ort-cpu', 'ort-cuda', 'ort-trt', 'tensorrt')"};
            a.backend = value;
        }
    }
    std::string missing;
    if (!engine) missing += "--engine";
    if (!tiles) missing += std::string(missing.empty() ? "" : ", ") + "--tiles";
    if (a.inputs.empty()) missing += std::string(missing.empty() ? "" : ", ") + "inputs";
    if (!missing.empty()) throw UsageError{"the following arguments are required: " + missing};
    return a;
}

// How Python's pathlib prints a path: no "." parts, no doubled or trailing slashes.
std::string py_path(const std::string& p) {
    std::string out = p.size() && p[0] == '/' ? "/" : "";
    std::stringstream ss(p);
    std::string part;
    bool first = true;
    while (std::getline(ss, part, '/')) {
        if (part.empty() || part == ".") continue;
        out += (first ? "" : "/") + part;
        first = false;
    }
    return out.empty() ? "." : out;
}

struct Query {
    std::string label;
    path file;
    std::optional<jzi::LatLon> truth;
};

// RFC 4180 rows as Python's csv module reads them (quotes, doubled quotes, CR/LF line ends).
std::vector<std::vector<std::string>> read_csv(const std::string& text) {
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> row;
    std::string field;
    bool quoted = false, any = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (quoted) {
            if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
            else if (c == '"') quoted = false;
            else field += c;
        } else if (c == '"') {
            quoted = any = true;
        } else if (c == ',') {
            row.push_back(field), field.clear(), any = true;
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
            if (any || !field.empty()) row.push_back(field);
            if (!row.empty()) rows.push_back(row);
            row.clear(), field.clear(), any = false;
        } else {
            field += c, any = true;
        }
    }
    if (any || !field.empty()) row.push_back(field);
    if (!row.empty()) rows.push_back(row);
    return rows;
}

std::string strip(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n\f\v"), e = s.find_last_not_of(" \t\r\n\f\v");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::optional<double> parse_float(const std::string& s) {
    const std::string t = strip(s);
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0') return std::nullopt;
    return v;
}

path resolve(const path& folder, const std::string& name, bool is_id) {
    std::vector<path> candidates = {folder / name};
    if (is_id)
        candidates = {folder / "streetview" / "images" / (name + "_undistorted.jpg"),
                      folder.parent_path() / "streetview" / "images" / (name + "_undistorted.jpg"), folder / name,
                      folder / (name + ".jpg")};
    for (const auto& c : candidates)
        if (jzi::fs::is_regular_file(c)) return c;
    return candidates[0];
}

std::vector<Query> csv_queries(const path& csv, std::vector<std::string>& problems) {
    std::ifstream f(csv, std::ios::binary);
    if (!f) throw jzi::ArgumentError(csv.string() + ": cannot read the CSV (" + std::strerror(errno) + ")");
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str();
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text = text.substr(3);  // utf-8-sig
    const auto rows = read_csv(text);
    if (rows.size() < 2) return {};
    const auto& header = rows[0];
    auto column = [&](std::initializer_list<const char*> names) -> int {
        for (const char* n : names)
            for (size_t i = 0; i < header.size(); ++i)
                if (!header[i].empty() && lower(strip(header[i])) == n) return static_cast<int>(i);
        return -1;
    };
    const int key = column({"path"}) >= 0 ? column({"path"}) : column({"image"}) >= 0 ? column({"image"})
                    : column({"file"}) >= 0 ? column({"file"}) : column({"image_id"});
    if (key < 0) {
        std::string cols = "[";
        for (size_t i = 0; i < header.size(); ++i) cols += (i ? ", '" : "'") + lower(strip(header[i])) + "'";
        throw jzi::ArgumentError(csv.string() + ": needs a 'path' or 'image_id' column, has " + cols + "]");
    }
    const int lat = column({"latitude"}) >= 0 ? column({"latitude"}) : column({"lat"});
    const int lon = column({"longitude"}) >= 0 ? column({"longitude"}) : column({"lon"});
    const bool is_id = lower(header[key]) == "image_id";
    const std::string key_name = header[key];
    std::vector<Query> out;
    for (size_t r = 1; r < rows.size(); ++r) {
        const auto& row = rows[r];
        const int line = static_cast<int>(r) + 1;
        auto cell = [&](int c) -> std::optional<std::string> { return c >= 0 && c < int(row.size()) ? std::optional(row[c]) : std::nullopt; };
        const std::string name = strip(cell(key).value_or(""));
        if (name.empty()) {
            problems.push_back(csv.string() + ":" + std::to_string(line) + ": empty " + key_name);
            continue;
        }
        std::optional<jzi::LatLon> truth;
        if (lat >= 0 && lon >= 0) {
            const auto la = cell(lat) ? parse_float(*cell(lat)) : std::nullopt;
            const auto lo = cell(lon) ? parse_float(*cell(lon)) : std::nullopt;
            if (!la || !lo || !(*la >= -90 && *la <= 90 && *lo >= -180 && *lo <= 180)) {
                auto repr = [](const std::optional<std::string>& s) { return s ? "'" + *s + "'" : std::string("None"); };
                problems.push_back(csv.string() + ":" + std::to_string(line) + ": bad latitude/longitude " + repr(cell(lat)) +
                                   ", " + repr(cell(lon)));
                continue;
            }
            truth = jzi::LatLon{*la, *lo};
        }
        out.push_back({name, resolve(csv.parent_path(), name, is_id), truth});
    }
    return out;
}

std::vector<Query> gather(const std::vector<std::string>& inputs, std::vector<std::string>& problems) {
    std::vector<Query> queries;
    for (const auto& item : inputs) {
        const path p = py_path(item);
        std::string ext = lower(p.extension().string());
        if (jzi::fs::is_directory(p)) {
            const auto found = jzi::list_images(p);
            if (found.empty()) problems.push_back(p.string() + ": no images in this folder");
            for (const auto& f : found) queries.push_back({py_path(f.string()), f, std::nullopt});
        } else if (ext == ".csv") {
            if (!jzi::fs::is_regular_file(p)) {
                problems.push_back(p.string() + ": no such file");
            } else {
                auto more = csv_queries(p, problems);
                queries.insert(queries.end(), more.begin(), more.end());
            }
        } else {
            queries.push_back({p.string(), p, std::nullopt});
        }
    }
    return queries;
}

Json result_json(const jzi::Localization& r) {
    Json j;
    j["latitude"] = r.latitude;
    j["longitude"] = r.longitude;
    j["path"] = r.path;
    j["step_probs"] = r.step_probs;
    j["confidence"] = r.confidence;
    j["candidates"] = Json::array();
    for (const auto& c : r.candidates)
        j["candidates"].push_back(
            {{"latitude", c.latitude}, {"longitude", c.longitude}, {"path", c.path}, {"score", c.score}, {"probability", c.probability}});
    const auto& t = r.timings;
    j["timings"] = {{"read_ms", t.read_ms}, {"preprocess_ms", t.preprocess_ms}, {"encoder_ms", t.encoder_ms}, {"batch", t.batch},
                    {"total_ms", t.total_ms}, {"tiles_ms", t.tiles_ms}, {"decoder_steps_ms", t.decoder_steps_ms},
                    {"decoder_ms", t.decoder_ms}, {"zoom_ms", t.zoom_ms}};
    return j;
}

Json feature(const Query& q, const jzi::Localization& r, std::optional<double> err) {
    Json props = {{"image", q.label}, {"path", r.path}, {"confidence", r.confidence}, {"step_probs", r.step_probs}};
    if (q.truth) {
        props["truth_latitude"] = q.truth->lat;
        props["truth_longitude"] = q.truth->lon;
        props["error_m"] = *err;
    }
    if (!r.candidates.empty()) {
        props["candidates"] = Json::array();
        for (const auto& c : r.candidates)
            props["candidates"].push_back({{"latitude", c.latitude}, {"longitude", c.longitude}, {"path", c.path}, {"probability", c.probability}});
    }
    return {{"type", "Feature"}, {"geometry", {{"type", "Point"}, {"coordinates", {r.longitude, r.latitude}}}}, {"properties", props}};
}

Json recall_summary(std::vector<double> errors) {
    std::sort(errors.begin(), errors.end());
    const size_t n = errors.size();
    Json s = {{"n", n}};
    for (int m : kRecallM) {
        size_t within = 0;
        for (double e : errors) within += e <= m;
        s["R@" + std::to_string(m) + "m"] = double(within) / double(n);
    }
    s["median_error_m"] = n % 2 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
    double sum = 0;
    for (double e : errors) sum += e;
    s["mean_error_m"] = sum / double(n);
    return s;
}

void write_json_atomic(const path& out, const Json& doc) {
    if (!out.parent_path().empty()) jzi::fs::create_directories(out.parent_path());
    const path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp");
    {
        std::ofstream f(tmp, std::ios::binary);
        f << doc.dump(1);
        if (!f) throw jzi::Error(jzi::ErrorKind::Io, tmp.string() + ": cannot write");
    }
    jzi::fs::rename(tmp, out);
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), f, v);
    return buf;
}

int run(const Args& args) {
    if (args.beams < 1 || args.batch < 1) throw jzi::ArgumentError("--beams and --batch must be at least 1");
    if (args.max_pixels < 1) throw jzi::ArgumentError("--max-pixels must be positive");
    std::vector<std::string> problems;
    const auto queries = gather(args.inputs, problems);
    if (queries.empty() && problems.empty()) throw jzi::ArgumentError("no photos given (the CSV lists none)");
    jzi::LocalizerOptions options;
    options.backend = args.backend;
    options.threads = args.threads;
    options.verify_bundle = !args.no_verify;
    jzi::Localizer loc(args.engine, args.tiles, options);
    if (!args.viz.empty() && !loc.store().has_pixels()) {
        if (args.source.empty())
            throw jzi::ArgumentError("--viz needs view pixels: build the store with jzi-tiles build --thumbs PX, or pass --source");
        throw jzi::ArgumentError("--source: jzi-run-native draws from the store's thumbnails only; render from imagery with jzi-run");
    }
    for (const auto& line : problems) std::cerr << kProg << ": " << line << "\n";

    struct Done {
        Query q;
        jzi::Localization r;
        std::optional<double> err;
    };
    std::vector<Done> done;
    std::vector<std::pair<Query, cv::Mat>> pending;
    cv::Mat first_photo;
    auto flush = [&] {
        std::vector<cv::Mat> images;
        for (auto& p : pending) images.push_back(p.second);
        const auto results = loc.localize_batch(images, args.beams);
        for (size_t i = 0; i < results.size(); ++i) {
            const auto& q = pending[i].first;
            const auto& r = results[i];
            std::optional<double> err;
            if (q.truth) err = jzi::distance_m({r.latitude, r.longitude}, *q.truth);
            done.push_back({q, r, err});
            if (!args.json) {
                std::string line = q.label + "  " + fmt("%.6f", r.latitude) + ", " + fmt("%.6f", r.longitude);
                if (err) line += "  error " + fmt("%.1f", *err) + " m";
                line += "  confidence " + fmt("%.3g", r.confidence);
                if (!r.candidates.empty()) {
                    line += "  top-" + std::to_string(r.candidates.size()) + ": ";
                    for (size_t c = 1; c < r.candidates.size(); ++c)
                        line += (c > 1 ? "; " : "") + fmt("%.6f", r.candidates[c].latitude) + ", " + fmt("%.6f", r.candidates[c].longitude) +
                                " (" + fmt("%.3f", r.candidates[c].probability) + ")";
                }
                std::cout << line << std::endl;
            }
        }
        pending.clear();
    };

    size_t failures = problems.size();
    for (const auto& q : queries) {
        try {
            pending.emplace_back(q, jzi::read_image(q.file, args.max_pixels));
        } catch (const jzi::Error& e) {
            if (e.kind() != jzi::ErrorKind::Image) throw;
            std::cerr << kProg << ": " << e.what() << "\n";
            ++failures;
            continue;
        }
        if (first_photo.empty()) first_photo = pending.back().second;
        if (static_cast<int>(pending.size()) >= args.batch) flush();
    }
    if (!pending.empty()) flush();

    std::vector<double> errors;
    for (const auto& d : done)
        if (d.err) errors.push_back(*d.err);
    const Json summary = errors.empty() ? Json() : recall_summary(errors);
    if (args.json) {
        Json results = Json::array();
        for (const auto& d : done) {
            Json j = {{"image", d.q.label}};
            j.update(result_json(d.r));
            if (d.err) j["error_m"] = *d.err;
            results.push_back(j);
        }
        const Json doc = {{"backend", loc.backend().describe()}, {"results", results}, {"summary", summary}, {"failed", failures}};
        std::cout << doc.dump(1) << std::endl;
    } else if (!errors.empty()) {
        std::string line = std::to_string(errors.size()) + " photos with truth: ";
        for (int m : kRecallM)
            line += (m == 40 ? "" : "  ") + std::string("R@") + std::to_string(m) + "m " +
                    fmt("%.1f", 100 * summary["R@" + std::to_string(m) + "m"].get<double>()) + "%";
        line += "  median error " + fmt("%.1f", summary["median_error_m"].get<double>()) + " m";
        std::cout << line << std::endl;
    }
    if (!args.geojson.empty()) {
        Json features = Json::array();
        for (const auto& d : done) features.push_back(feature(d.q, d.r, d.err));
        write_json_atomic(args.geojson, {{"type", "FeatureCollection"}, {"features", features}});
    }
    if (!args.viz.empty() && !done.empty()) {
        const auto& d = done[0];
        std::string caption = d.q.label + ": " + fmt("%.6f", d.r.latitude) + ", " + fmt("%.6f", d.r.longitude);
        if (d.err) caption += ", error " + fmt("%.1f", *d.err) + " m";
        const auto views = jzi::view_images(loc.store(), d.r.path);
        jzi::save_rgb(args.viz, jzi::draw_zoom(first_photo, views, loc.region(), d.r.path, d.r.step_probs, d.q.truth, caption));
        if (!args.json) std::cout << "zoom path drawn to " << args.viz << std::endl;
    }
    return failures ? 1 : 0;
}
}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // output piped into head & co.: stop quietly (checked below)
    Args args;
    try {
        args = parse_args(argc, argv);
    } catch (const UsageError& e) {
        std::cerr << kUsage << kProg << ": error: " << e.message << "\n";
        return 2;
    }
    try {
        const int rc = run(args);
        std::cout.flush();
        return std::cout.fail() ? 0 : rc;
    } catch (const jzi::Error& e) {
        std::cerr << kProg << ": error: " << e.what() << "\n";
    } catch (const jzi::fs::filesystem_error& e) {
        std::cerr << kProg << ": error: " << e.what() << "\n";
    } catch (const std::exception& e) {
        std::cerr << kProg << ": error: " << e.what() << "\n";
    }
    return 1;
}
