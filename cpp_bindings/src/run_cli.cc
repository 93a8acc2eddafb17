// jzi-run-native: localize street photos, with jzi-run's arguments, output and exit codes.
//
//     jzi-run-native --engine BUNDLE --tiles REGION.jzt query.jpg [more.jpg | folder/ | list.csv]
//                    [--beams k] [--json] [--geojson out.geojson] [--resume PREVIOUS] [--viz out.png]
//
// Prints "photo  latitude, longitude" per photo. A CSV lists photos in a `path` column (relative to the
// CSV) or in the authors' dataset format (`image_id` with streetview/images/{id}_undistorted.jpg beside
// the CSV or one folder up); with latitude/longitude columns each line also gets its error in metres and
// a R@40/50/100m summary follows. A photo that cannot be read is one line on stderr and the rest go on;
// the exit status is then 1. Bad setup: one line, exit 1; bad arguments: usage, exit 2; Ctrl-C: 130.
//
// Answers are written as they come, as runtime/run_output.py writes them: --json prints JSON Lines (an
// object per answer or failure, then a summary line), --geojson streams a FeatureCollection into a
// temporary file that is closed and renamed into place when the run ends, also on Ctrl-C. --resume
// PREVIOUS skips the photos answered in an earlier --json or --geojson output. Batch runs into a table
// (--out, --shard, --ray) and --viz --source are jzi-run's only.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "jzi/backend.h"
#include "jzi/localizer.h"
#include "jzi/viz.h"

namespace {
using jzi::fs::path;
using jzi::Json;  // keys in jzi-run's order

const char* kProg = "jzi-run-native";
const int kRecallM[] = {40, 50, 100};

const char* kUsage =
    "usage: jzi-run-native [-h] --engine BUNDLE --tiles REGION.jzt [--beams BEAMS] [--batch BATCH]\n"
    "                      [--backend {auto,ort-cpu,ort-cuda,ort-trt,tensorrt}] [--threads THREADS] [--json]\n"
    "                      [--geojson OUT] [--resume PREVIOUS] [--viz OUT.png] [--max-pixels MAX_PIXELS] [--no-verify]\n"
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
    "  --json                print JSON Lines: one object per answer or failure as it comes, then a summary line\n"
    "  --geojson OUT         write the answers (and truths) as a GeoJSON FeatureCollection\n"
    "  --resume PREVIOUS     skip photos already answered in PREVIOUS (an earlier --json or --geojson output)\n"
    "  --viz OUT.png         draw the zoom path of the first photo (from the store's thumbnails)\n"
    "  --source IMAGERY      views for --viz rendered from imagery: jzi-run only\n"
    "  --max-pixels MAX_PIXELS\n"
    "                        refuse larger photos (100000000)\n"
    "  --no-verify           skip the bundle checksum check at start-up\n";

struct UsageError {
    std::string message;
};

struct Args {
    std::vector<std::string> inputs;
    std::string engine, tiles, backend = "auto", geojson, resume, viz, source;
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
                                       "--geojson", "--resume", "--viz", "--source", "--max-pixels"};
        bool known = false;
        for (const char* v : valued) known = known || arg == v;
        for (const char* v : {"--out", "--shard", "--ray", "--chunk-size", "--force", "--quiet", "--workers"})
            if (arg == v) throw UsageError{"argument " + arg + ": batch runs into a table (--out, --shard, --ray) are jzi-run's only"};
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
        else if (arg == "--resume") a.resume = value;
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

using Problems = std::vector<std::pair<std::string, std::string>>;  // (label, one line) of what cannot be used

std::vector<Query> csv_queries(const path& csv, Problems& problems) {
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
            const std::string where = csv.string() + ":" + std::to_string(line);
            problems.emplace_back(where, where + ": empty " + key_name);
            continue;
        }
        std::optional<jzi::LatLon> truth;
        if (lat >= 0 && lon >= 0) {
            const auto la = cell(lat) ? parse_float(*cell(lat)) : std::nullopt;
            const auto lo = cell(lon) ? parse_float(*cell(lon)) : std::nullopt;
            if (!la || !lo || !(*la >= -90 && *la <= 90 && *lo >= -180 && *lo <= 180)) {
                auto repr = [](const std::optional<std::string>& s) { return s ? "'" + *s + "'" : std::string("None"); };
                const std::string where = csv.string() + ":" + std::to_string(line);
                problems.emplace_back(where, where + ": bad latitude/longitude " + repr(cell(lat)) + ", " + repr(cell(lon)));
                continue;
            }
            truth = jzi::LatLon{*la, *lo};
        }
        out.push_back({name, resolve(csv.parent_path(), name, is_id), truth});
    }
    return out;
}

std::vector<Query> gather(const std::vector<std::string>& inputs, Problems& problems) {
    std::vector<Query> queries;
    for (const auto& item : inputs) {
        const path p = py_path(item);
        std::string ext = lower(p.extension().string());
        if (jzi::fs::is_directory(p)) {
            const auto found = jzi::list_images(p);
            if (found.empty()) problems.emplace_back(p.string(), p.string() + ": no images in this folder");
            for (const auto& f : found) queries.push_back({py_path(f.string()), f, std::nullopt});
        } else if (ext == ".csv") {
            if (!jzi::fs::is_regular_file(p)) {
                problems.emplace_back(p.string(), p.string() + ": no such file");
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

// ---- JSON as Python's json.dumps writes it (", " and ": ", floats as repr, strict: no NaN) --------------
std::string dumps(const Json& v) {
    if (v.is_object()) {
        std::string out = "{";
        bool first = true;
        for (auto it = v.begin(); it != v.end(); ++it, first = false) out += (first ? "" : ", ") + dumps(Json(it.key())) + ": " + dumps(it.value());
        return out + "}";
    }
    if (v.is_array()) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + dumps(v[i]);
        return out + "]";
    }
    if (v.is_number_float()) {
        if (!std::isfinite(v.get<double>())) throw jzi::ArgumentError("Out of range float values are not JSON compliant");
        return jzi::schema::py_repr(v);
    }
    return v.dump(-1, ' ', true, Json::error_handler_t::replace);  // strings (ASCII, \u escapes), ints, bools, null
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

Json feature(const std::string& label, const jzi::Localization& r, std::optional<double> err, std::optional<jzi::LatLon> truth) {
    Json props = {{"image", label}, {"path", r.path}, {"confidence", r.confidence}, {"step_probs", r.step_probs}};
    if (truth) {
        props["truth_latitude"] = truth->lat;
        props["truth_longitude"] = truth->lon;
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

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), f, v);
    return buf;
}

void say(std::ostream& out, const std::string& line) { out << line << '\n' << std::flush; }

// ---- where the answers go (runtime/run_output.py): answer, failure, close --------------------------------
class Output {
public:
    virtual ~Output() = default;
    virtual void answer(const std::string& label, const jzi::Localization& r, std::optional<double> err, std::optional<jzi::LatLon> truth) = 0;
    virtual void failure(const std::string& label, const std::string& reason) = 0;
    virtual void close(const Json& summary, bool interrupted) = 0;
};

class TextOutput : public Output {
public:
    void answer(const std::string& label, const jzi::Localization& r, std::optional<double> err, std::optional<jzi::LatLon>) override {
        std::string line = label + "  " + fmt("%.6f", r.latitude) + ", " + fmt("%.6f", r.longitude);
        if (err) line += "  error " + fmt("%.1f", *err) + " m";
        line += "  confidence " + fmt("%.3g", r.confidence);
        if (!r.candidates.empty()) {
            line += "  top-" + std::to_string(r.candidates.size()) + ": ";
            for (size_t c = 0; c < r.candidates.size(); ++c)
                line += (c ? "; " : "") + fmt("%.6f", r.candidates[c].latitude) + ", " + fmt("%.6f", r.candidates[c].longitude) + " (" +
                        fmt("%.3f", r.candidates[c].probability) + ")";
        }
        say(std::cout, line);
    }
    void failure(const std::string&, const std::string& reason) override { say(std::cerr, std::string(kProg) + ": " + reason); }
    void close(const Json& summary, bool) override {
        if (summary.is_null()) return;
        std::string line = std::to_string(summary["n"].get<size_t>()) + " photos with truth: ";
        for (int m : kRecallM)
            line += (m == kRecallM[0] ? "" : "  ") + std::string("R@") + std::to_string(m) + "m " +
                    fmt("%.1f", 100 * summary["R@" + std::to_string(m) + "m"].get<double>()) + "%";
        say(std::cout, line + "  median error " + fmt("%.1f", summary["median_error_m"].get<double>()) + " m");
    }
};

class JsonLinesOutput : public Output {
public:
    explicit JsonLinesOutput(std::string backend) : backend_(std::move(backend)) {}
    void answer(const std::string& label, const jzi::Localization& r, std::optional<double> err, std::optional<jzi::LatLon>) override {
        Json j = {{"image", label}};
        j.update(result_json(r));
        if (err) j["error_m"] = *err;
        say(std::cout, dumps(j));
    }
    void failure(const std::string& label, const std::string& reason) override {
        failed_.push_back({{"image", label}, {"error", reason}});
        say(std::cout, dumps(failed_.back()));
        say(std::cerr, std::string(kProg) + ": " + reason);  // for the person watching, too
    }
    void close(const Json& summary, bool interrupted) override {
        say(std::cout, dumps({{"summary", summary}, {"failed", failed_}, {"backend", backend_}, {"interrupted", interrupted}}));
    }

private:
    std::string backend_;
    Json failed_ = Json::array();
};

// A FeatureCollection written feature by feature into .OUT.tmp beside OUT, renamed to OUT by close.
class GeoJsonOutput : public Output {
public:
    GeoJsonOutput(const path& out, const std::vector<Json>& carried, std::ostream& report) : path_(out), report_(report) {
        if (!out.parent_path().empty()) jzi::fs::create_directories(out.parent_path());
        tmp_ = out.parent_path() / ("." + out.filename().string() + ".tmp");
        file_.open(tmp_, std::ios::binary | std::ios::trunc);
        if (!file_) throw jzi::Error(jzi::ErrorKind::Io, tmp_.string() + ": cannot write");
        file_ << "{\"type\": \"FeatureCollection\", \"features\": [";
        for (const auto& f : carried) write(f);  // answers of the run being resumed
    }
    void answer(const std::string& label, const jzi::Localization& r, std::optional<double> err, std::optional<jzi::LatLon> truth) override {
        write(feature(label, r, err, truth));
    }
    void failure(const std::string& label, const std::string& reason) override { failed_.push_back({{"image", label}, {"error", reason}}); }
    void close(const Json&, bool interrupted) override {
        file_ << "\n], \"failed\": " << dumps(failed_) << ", \"interrupted\": " << (interrupted ? "true" : "false") << "}\n";
        file_.close();
        if (!file_) throw jzi::Error(jzi::ErrorKind::Io, tmp_.string() + ": cannot write");
        jzi::fs::rename(tmp_, path_);
        if (!interrupted) say(report_, "wrote " + std::to_string(count_) + " answers to " + path_.string());  // an interrupt has its own line
    }

private:
    void write(const Json& feat) {
        file_ << (count_ == 0 ? "\n" : ",\n") << dumps(feat) << std::flush;
        ++count_;
    }
    path path_, tmp_;
    std::ostream& report_;
    std::ofstream file_;
    size_t count_ = 0;
    Json failed_ = Json::array();
};

// str.splitlines() for the line ends a JSON Lines file can hold.
std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    size_t at = 0;
    while (at < text.size()) {
        const size_t end = text.find_first_of("\n\r\v\f\x1c\x1d\x1e", at);
        lines.push_back(text.substr(at, end == std::string::npos ? std::string::npos : end - at));
        if (end == std::string::npos) break;
        at = end + (text.compare(end, 2, "\r\n") == 0 ? 2 : 1);
    }
    return lines;
}

// (labels answered, GeoJSON features to carry over) from a previous --json or --geojson output
// (previous_answers of run_output.py): in JSON Lines an unreadable last line is skipped (a run killed
// mid-line), anything else unreadable is one line naming the file and line.
std::pair<std::set<std::string>, std::vector<Json>> previous_answers(const path& file) {
    std::ifstream f(file, std::ios::binary);
    if (!f) throw jzi::ArgumentError(file.string() + ": cannot read the previous output (" + std::strerror(errno) + ")");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    Json doc;
    try {
        doc = Json::parse(text);
    } catch (const Json::exception&) {
        doc = Json();
    }
    std::set<std::string> done;
    if ((doc.is_object() && doc.contains("type") && doc["type"] == "FeatureCollection") ||
        text.substr(0, 200).find("\"FeatureCollection\"") != std::string::npos) {
        std::vector<Json> feats;
        const std::string incomplete = file.string() + ": not a complete jzi-run GeoJSON output";
        if (!doc.is_object() || !doc.contains("features") || !doc["features"].is_array()) throw jzi::ArgumentError(incomplete);
        for (const auto& feat : doc["features"]) {
            if (!feat.is_object() || !feat.contains("properties") || !feat["properties"].is_object() || !feat["properties"].contains("image"))
                throw jzi::ArgumentError(incomplete);
            if (!feat["properties"]["image"].is_string()) continue;
            done.insert(feat["properties"]["image"].get<std::string>());
            feats.push_back(feat);
        }
        return {done, feats};
    }
    const auto lines = split_lines(text);
    for (size_t n = 1; n <= lines.size(); ++n) {
        const std::string& line = lines[n - 1];
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        Json rec;
        try {
            rec = Json::parse(line);
        } catch (const Json::exception&) {
            if (n == lines.size()) break;
            throw jzi::ArgumentError(file.string() + ":" + std::to_string(n) + ": not a jzi-run --json line");
        }
        if (!rec.is_object()) throw jzi::ArgumentError(file.string() + ":" + std::to_string(n) + ": not a jzi-run --json line");
        if (rec.contains("image") && rec["image"].is_string() && rec.contains("latitude")) done.insert(rec["image"].get<std::string>());
    }
    return {done, {}};
}

// ---- Ctrl-C: before the outputs are open it ends the process at once; after, the loop stops between
// photos and every output is closed properly (exit status 130 either way) ------------------------------
volatile std::sig_atomic_t g_interrupted = 0;
const char kInterrupted[] = "jzi-run-native: interrupted; the answers so far are kept (run again with --resume to go on)\n";

void on_sigint_setup(int) {
    const ssize_t ignored = ::write(2, kInterrupted, sizeof(kInterrupted) - 1);
    (void)ignored;
    ::_exit(130);
}

void on_sigint_loop(int) { g_interrupted = 1; }

struct Interrupted {};

int run(const Args& args) {
    if (args.beams < 1 || args.batch < 1) throw jzi::ArgumentError("--beams and --batch must be at least 1");
    if (args.max_pixels < 1) throw jzi::ArgumentError("--max-pixels must be positive");
    Problems problems;
    auto queries = gather(args.inputs, problems);
    if (queries.empty() && problems.empty()) throw jzi::ArgumentError("no photos given (the CSV lists none)");
    std::set<std::string> answered;
    std::vector<Json> carried;
    if (!args.resume.empty()) std::tie(answered, carried) = previous_answers(args.resume);
    // The first photo is read and decoded on another thread while the bundle and the store load: the
    // same work and the same refusals, in their usual place (a setup error is still reported first).
    const auto first = std::find_if(queries.begin(), queries.end(), [&](const Query& q) { return !answered.count(q.label); });
    const path first_file = first == queries.end() ? path() : first->file;
    std::future<cv::Mat> prefetched;
    if (!first_file.empty())
        prefetched = std::async(std::launch::async, [&first_file, &args] { return jzi::read_image(first_file, args.max_pixels); });
    jzi::LocalizerOptions options;
    options.backend = args.backend;
    options.threads = args.threads;
    options.verify_bundle = !args.no_verify;
    jzi::Localizer loc(args.engine, args.tiles, options);
    if (prefetched.valid()) prefetched.wait();  // while it decodes, stderr may point at /dev/null (quiet codecs)
    if (!args.viz.empty() && !args.source.empty())
        throw jzi::ArgumentError("--source: jzi-run-native draws from the store's thumbnails only; render from imagery with jzi-run");
    if (!args.viz.empty() && !loc.store().has_pixels())
        throw jzi::ArgumentError("--viz needs view pixels: build the store with jzi-tiles build --thumbs PX, or pass --source");
    if (!answered.empty()) {
        const size_t before = queries.size();
        queries.erase(std::remove_if(queries.begin(), queries.end(), [&](const Query& q) { return answered.count(q.label) > 0; }),
                      queries.end());
        say(std::cerr, std::string(kProg) + ": resuming: " + std::to_string(before - queries.size()) + " photos already answered in " +
                           args.resume);
    }
    std::vector<std::unique_ptr<Output>> outputs;
    if (args.json) outputs.push_back(std::make_unique<JsonLinesOutput>(loc.backend().describe()));
    else outputs.push_back(std::make_unique<TextOutput>());
    if (!args.geojson.empty()) outputs.push_back(std::make_unique<GeoJsonOutput>(args.geojson, carried, args.json ? std::cerr : std::cout));

    struct Done {
        Query q;
        jzi::Localization r;
        std::optional<double> err;
    };
    std::vector<Done> done;
    std::vector<std::pair<Query, cv::Mat>> pending;
    cv::Mat first_photo;
    size_t failures = 0;
    const auto fail = [&](const std::string& label, const std::string& line) {
        ++failures;
        for (auto& out : outputs) out->failure(label, line);
    };
    const auto flush = [&] {
        std::vector<cv::Mat> images;
        for (auto& p : pending) images.push_back(p.second);
        const auto results = loc.localize_batch(images, args.beams);
        for (size_t i = 0; i < results.size(); ++i) {
            const auto& q = pending[i].first;
            std::optional<double> err;
            if (q.truth) err = jzi::distance_m({results[i].latitude, results[i].longitude}, *q.truth);
            done.push_back({q, results[i], err});
            for (auto& out : outputs) out->answer(q.label, results[i], err, q.truth);
        }
        pending.clear();
    };
    const auto close_all = [&](bool interrupted) {
        std::vector<double> errors;
        for (const auto& d : done)
            if (d.err) errors.push_back(*d.err);
        const Json summary = errors.empty() ? Json() : recall_summary(errors);
        for (auto& out : outputs) out->close(summary, interrupted);
    };

    std::signal(SIGINT, on_sigint_loop);
    try {
        for (const auto& [label, line] : problems) fail(label, line);
        for (const auto& q : queries) {
            if (g_interrupted) throw Interrupted{};
            try {
                const bool ready = prefetched.valid() && q.file == first_file;
                pending.emplace_back(q, ready ? prefetched.get() : jzi::read_image(q.file, args.max_pixels));
            } catch (const jzi::Error& e) {
                if (e.kind() != jzi::ErrorKind::Image) throw;
                fail(q.label, e.what());
                continue;
            }
            if (first_photo.empty()) first_photo = pending.back().second;
            if (static_cast<int>(pending.size()) >= args.batch) flush();
        }
        if (!pending.empty()) flush();
        if (g_interrupted) throw Interrupted{};
    } catch (...) {  // a Ctrl-C or an error still closes every output
        close_all(true);
        throw;
    }
    close_all(false);
    if (!args.viz.empty() && !done.empty()) {
        const auto& d = done[0];
        std::string caption = d.q.label + ": answer " + fmt("%.6f", d.r.latitude) + ", " + fmt("%.6f", d.r.longitude);
        if (d.err) caption += "; truth " + fmt("%.6f", d.q.truth->lat) + ", " + fmt("%.6f", d.q.truth->lon) + "; error " + fmt("%.1f", *d.err) + " m";
        const auto views = jzi::view_images(loc.store(), d.r.path);
        jzi::save_rgb(args.viz, jzi::draw_zoom(first_photo, views, loc.region(), d.r.path, d.r.step_probs, d.q.truth, caption));
        if (!args.json) say(std::cout, "zoom path drawn to " + args.viz);
    }
    return failures ? 1 : 0;
}
}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // output piped into head & co.: stop quietly (checked below)
    std::signal(SIGINT, on_sigint_setup);
    jzi::set_quiet_codecs(true);  // a damaged photo is one line, without libpng's or libjpeg's own
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
    } catch (const Interrupted&) {
        std::cerr << kInterrupted << std::flush;
        return 130;
    } catch (const std::exception& e) {  // jzi::Error, filesystem errors, anything else: one line
        if (std::cout.fail()) return 0;  // the reader went away (a broken pipe)
        std::cerr << kProg << ": error: " << e.what() << "\n";
    }
    return 1;
}
