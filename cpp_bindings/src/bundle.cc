// Bundle reading and validation, the same checks and messages as runtime/bundle.py.
#include "jzi/bundle.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include "jzi/schema.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <future>
#include <memory>

namespace jzi {

const char* const kGraphs[3] = {"view_encoder", "street_encoder", "decoder"};

namespace {

constexpr const char* kFormat = "jzi-bundle";
constexpr int kFormatVersion = 1;
constexpr const char* kManifest = "manifest.json";

using Digest = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

Digest new_digest() {
    Digest ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error(ErrorKind::Internal, "OpenSSL cannot start a sha256");
    return ctx;
}

std::string finish(Digest& ctx) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md, &n) != 1) throw Error(ErrorKind::Internal, "OpenSSL cannot finish a sha256");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < n; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 15];
    }
    return out;
}

const std::vector<std::string> kDtypes = {"uint8", "int32", "int64", "float16", "float32"};

// MANIFEST_SCHEMA of runtime/bundle.py: every field the runtime reads, with its type and range.
const schema::Validator& manifest_schema() {
    using namespace schema;
    static const Validator tensor = obj({{"name", string()},
                                         {"dtype", string(kDtypes)},
                                         {"shape", list_of(one_of({integer(0, int64_t(1) << 31), string()}), -1, 8)}});
    static const Validator graph_io = obj({{"inputs", list_of(tensor, -1, 4096)}, {"outputs", list_of(tensor, -1, 4096)}});
    static const Validator file = obj({{"path", string()}, {"sha256", string({}, 64)}}, {{"bytes", integer(0, int64_t(1) << 50)}});
    static const Validator manifest = obj(
        {{"region", region()},
         {"grid", integer(2, 16)},
         {"steps", integer(1, 12)},
         {"n_actions", integer(4, 256)},
         {"width", integer(1, 1 << 16)},
         {"image_size", integer(1, 1 << 14)},
         {"street_size", list_of(integer(1, 1 << 15), 2)},
         {"precision", string({"fp32", "fp16", "int8"})},
         {"decoder", obj({{"layers", integer(1, 256)}, {"heads", integer(1, 1024)}, {"head_dim", integer(1, 1 << 14)},
                          {"cache_len", integer(2, 48)}})},
         {"tensors", obj({{"view_encoder", graph_io}, {"street_encoder", graph_io}, {"decoder", graph_io}})},
         {"files", mapping(file)},
         {"encoder_id", string()}},
        {{"normalization", obj({{"mean", list_of(number(0, 1), 3)}, {"std", list_of(number(0, 1e3, true), 3)}})},
         {"tensorrt", any_value()},
         {"parity", any_value()}});
    return manifest;
}

// tensor_specs of runtime/bundle.py: what the scalar fields imply every graph's inputs and outputs are.
std::map<std::string, std::pair<Json, Json>> implied_tensors(const Manifest& m) {
    const int64_t s = m.image_size, d = m.width;
    const Json cache = {"batch", m.heads, m.cache_len, m.head_dim};
    auto t = [](const std::string& name, const Json& shape, const char* dtype) { return Json{{"name", name}, {"shape", shape}, {"dtype", dtype}}; };
    Json dec_in = {t("query", {"batch", d}, "float32"), t("view", {"batch", d}, "float32"), t("prev_action", {"batch"}, "int64"),
                   t("step", Json::array(), "int64")};
    Json dec_out = Json::array({t("logits", {"batch", m.n_actions}, "float32")});
    for (const auto& n : past_names(m.layers)) dec_in.push_back(t(n, cache, "float32"));
    for (const auto& n : present_names(m.layers)) dec_out.push_back(t(n, cache, "float32"));
    const Json embedding = Json::array({t("embedding", {"batch", d}, "float32")});
    return {{"view_encoder", {Json::array({t("images", {"batch", s, s, 3}, "uint8")}), embedding}},
            {"street_encoder", {Json::array({t("images", {"batch", s, 2 * s, 3}, "uint8")}), embedding}},
            {"decoder", {dec_in, dec_out}}};
}

// The first way the manifest's fields disagree with each other (_check_consistency), or "".
std::string inconsistency(const Manifest& m, const Json& doc) {
    const Region& r = m.region;
    if (r.grid != m.grid || r.steps != m.steps || r.view_px != m.image_size)
        return "region.grid/steps/view_px disagree with grid/steps/image_size";
    if (m.n_actions != m.grid * m.grid)
        return "n_actions is " + std::to_string(m.n_actions) + ", a " + std::to_string(m.grid) + "x" + std::to_string(m.grid) +
               " grid has " + std::to_string(m.grid * m.grid);
    if (doc["street_size"] != Json::array({m.image_size, 2 * m.image_size}))
        return "street_size is " + schema::py_repr(doc["street_size"]) + ", image_size " + std::to_string(m.image_size) + " needs [S, 2S]";
    if (m.cache_len != 2 * m.steps)
        return "decoder.cache_len is " + std::to_string(m.cache_len) + ", " + std::to_string(m.steps) + " steps need " + std::to_string(2 * m.steps);
    if (m.heads * m.head_dim != m.width)
        return "decoder.heads x decoder.head_dim is " + std::to_string(m.heads * m.head_dim) + ", width is " + std::to_string(m.width);
    const auto expected = implied_tensors(m);
    for (const char* graph : kGraphs) {
        for (const char* side : {"inputs", "outputs"}) {
            const Json& got = doc["tensors"][graph][side];
            const Json& want = std::string(side) == "inputs" ? expected.at(graph).first : expected.at(graph).second;
            bool same_names = got.size() == want.size();
            for (size_t i = 0; same_names && i < got.size(); ++i) same_names = got[i]["name"] == want[i]["name"];
            if (!same_names) return std::string("tensors.") + graph + "." + side + " names disagree with decoder.layers/the graph contract";
            for (size_t i = 0; i < got.size(); ++i)
                if (got[i]["dtype"] != want[i]["dtype"] || got[i]["shape"] != want[i]["shape"])
                    return std::string("tensors.") + graph + "." + side + " '" + got[i]["name"].get<std::string>() + "' is " +
                           got[i]["dtype"].get<std::string>() + " " + schema::py_repr(got[i]["shape"]) + ", the manifest's sizes imply " +
                           want[i]["dtype"].get<std::string>() + " " + schema::py_repr(want[i]["shape"]);
        }
    }
    return "";
}

GraphSpec graph_spec(const Json& spec) {
    GraphSpec g;
    for (const char* side : {"inputs", "outputs"})
        for (const auto& t : spec[side]) {
            TensorSpec ts{t["name"].get<std::string>(), {}, t["dtype"].get<std::string>()};
            for (const auto& d : t["shape"]) ts.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
            (std::string(side) == "inputs" ? g.inputs : g.outputs).push_back(ts);
        }
    return g;
}

bool inside(const fs::path& root, const fs::path& target) {
    for (fs::path p = target.parent_path(); !p.empty(); p = p.parent_path()) {
        if (p == root) return true;
        if (p == p.parent_path()) break;
    }
    return false;
}
}  // namespace

std::string sha256_bytes(const void* data, size_t size) {
    Digest ctx = new_digest();
    EVP_DigestUpdate(ctx.get(), data, size);
    return finish(ctx);
}

std::string sha256_file(const fs::path& path) {
    // Streamed through read(), as Python's reader does: a file cut short while it is hashed gives another
    // digest (refused as not matching its manifest entry), where a memory map would fault (SIGBUS).
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(ErrorKind::Io, path.string() + ": cannot read (" + std::strerror(errno) + ")");
    std::vector<unsigned char> buf(size_t(1) << 20);
    Digest ctx = new_digest();
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n == 0) break;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            throw Error(ErrorKind::Io, path.string() + ": cannot read (" + std::strerror(err) + ")");
        }
        EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    }
    ::close(fd);
    return finish(ctx);
}

std::vector<std::string> past_names(int layers) {
    std::vector<std::string> out;
    for (int i = 0; i < layers; ++i)
        for (const char* kv : {"key", "value"}) out.push_back("past_key_values." + std::to_string(i) + "." + kv);
    return out;
}

std::vector<std::string> present_names(int layers) {
    std::vector<std::string> out;
    for (int i = 0; i < layers; ++i)
        for (const char* kv : {"key", "value"}) out.push_back("present." + std::to_string(i) + "." + kv);
    return out;
}

Region region_from_json(const Json& d) {
    Region r;  // the fields a region dict leaves out keep Region's defaults, as Region.from_dict does
    r.center_lat = d.at("center_lat").get<double>();
    r.center_lon = d.at("center_lon").get<double>();
    if (d.contains("size_m")) r.size_m = d["size_m"].get<double>();
    if (d.contains("grid")) r.grid = d["grid"].get<int>();
    if (d.contains("steps")) r.steps = d["steps"].get<int>();
    if (d.contains("view_px")) r.view_px = d["view_px"].get<int>();
    return r;
}

Manifest load_manifest(const fs::path& bundle_dir, bool verify) {
    const fs::path root = bundle_dir;
    const fs::path path = root / kManifest;
    if (!fs::exists(root)) throw BundleError(root.string() + ": does not exist");
    if (!fs::is_directory(root)) throw BundleError(root.string() + ": not a bundle directory");
    if (!fs::is_regular_file(path))
        throw BundleError(root.string() + ": no " + kManifest + "; is this a jzi bundle (made by jzi-export)?");
    Manifest m;
    m.root = root;
    m.doc = schema::read_json_document(path, kFormat, {{kFormatVersion, manifest_schema()}}, "jzi bundle manifest", ErrorKind::Bundle);
    const Json& doc = m.doc;
    // the schema has checked every type and range: the values can be taken as they are
    m.region = region_from_json(doc["region"]);
    m.grid = doc["grid"].get<int>();
    m.steps = doc["steps"].get<int>();
    m.n_actions = doc["n_actions"].get<int>();
    m.width = doc["width"].get<int>();
    m.image_size = doc["image_size"].get<int>();
    const Json& dec = doc["decoder"];
    m.layers = dec["layers"].get<int>();
    m.heads = dec["heads"].get<int>();
    m.head_dim = dec["head_dim"].get<int>();
    m.cache_len = dec["cache_len"].get<int>();
    m.precision = doc["precision"].get<std::string>();
    m.encoder_id = doc["encoder_id"].get<std::string>();
    if (const std::string problem = inconsistency(m, doc); !problem.empty()) throw BundleError(path.string() + ": " + problem);
    for (const char* graph : kGraphs) m.tensors[graph] = graph_spec(doc["tensors"][graph]);

    const Json& files = doc["files"];
    for (const char* role : kGraphs)
        if (!files.contains(role)) throw BundleError(path.string() + ": no '" + role + "' graph listed");
    // Every entry's path is checked in order up to the first that is refused; the files before it are
    // hashed concurrently (775 MB for the official bundle), then each entry is judged in order,
    // so the first problem reported is the one Python's reader reports.
    struct Entry {
        std::string role, rel, sha;
        fs::path target;
        std::string problem;
        std::future<std::string> digest;
    };
    std::vector<Entry> entries;
    const fs::path real_root = fs::canonical(root);
    for (auto it = files.begin(); it != files.end(); ++it) {
        Entry& e = entries.emplace_back();
        e.role = it.key();
        e.rel = it.value()["path"].get<std::string>();
        e.sha = it.value()["sha256"].get<std::string>();
        const bool plain = e.rel.find('\0') == std::string::npos;
        e.target = plain ? fs::weakly_canonical(root / e.rel) : fs::path();
        if (!plain || !inside(real_root, e.target))
            e.problem = path.string() + ": file entry '" + e.role + "' points outside the bundle";
        else if (!fs::is_regular_file(e.target))
            e.problem = root.string() + ": " + e.rel + " is missing";
        if (!e.problem.empty()) break;
        if (verify) e.digest = std::async(std::launch::async, sha256_file, e.target);
    }
    for (Entry& e : entries) {
        if (!e.problem.empty()) throw BundleError(e.problem);
        if (verify && e.digest.get() != e.sha)
            throw BundleError(root.string() + ": " + e.rel + " does not match its sha256 in the manifest (corrupt or edited)");
        m.files[e.role] = FileEntry{e.target, e.sha};
    }
    return m;
}

}  // namespace jzi
