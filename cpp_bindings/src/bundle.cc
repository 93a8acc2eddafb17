// Bundle reading and validation, the same checks and messages as runtime/bundle.py.
#include "jzi/bundle.h"

#include <openssl/evp.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>

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

// A positive integer field (not a bool, not a float); one Bundle error line otherwise.
int positive_int(const nlohmann::json& doc, const std::string& key, const fs::path& where, int64_t hi = 1 << 20) {
    const auto& v = doc.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > hi)
        throw BundleError(where.string() + ": '" + key + "' must be an integer in 1.." + std::to_string(hi) + ", got " + py_repr(v));
    return static_cast<int>(v.get<int64_t>());
}

GraphSpec graph_spec(const nlohmann::json& spec, const std::string& graph, const fs::path& where) {
    GraphSpec g;
    for (const char* side : {"inputs", "outputs"}) {
        if (!spec.is_object() || !spec.contains(side) || !spec[side].is_array())
            throw BundleError(where.string() + ": tensors." + graph + "." + side + " must be a list");
        for (const auto& t : spec[side]) {
            if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("shape") ||
                !t["shape"].is_array() || !t.contains("dtype") || !t["dtype"].is_string())
                throw BundleError(where.string() + ": tensors." + graph + "." + side + " entries need name, shape and dtype");
            TensorSpec ts{t["name"].get<std::string>(), {}, t["dtype"].get<std::string>()};
            for (const auto& d : t["shape"]) ts.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
            (std::string(side) == "inputs" ? g.inputs : g.outputs).push_back(ts);
        }
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
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(ErrorKind::Io, path.string() + ": cannot read");
    Digest ctx = new_digest();
    std::vector<char> buf(1 << 20);
    while (f) {
        f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        if (f.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(f.gcount()));
    }
    if (f.bad()) throw Error(ErrorKind::Io, path.string() + ": read error");
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

std::string py_repr(const nlohmann::json& v) {
    if (v.is_string()) return "'" + v.get<std::string>() + "'";
    if (v.is_null()) return "None";
    if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
    if (v.is_array()) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
        return out + "]";
    }
    if (v.is_object()) {
        std::string out = "{";
        bool first = true;
        for (auto it = v.begin(); it != v.end(); ++it, first = false) out += (first ? "'" : ", '") + it.key() + "': " + py_repr(it.value());
        return out + "}";
    }
    return v.dump();
}

nlohmann::json read_json_document(const fs::path& path, const std::string& format, int version, const std::string& what,
                                  ErrorKind kind, const std::vector<std::string>& required) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(ErrorKind::Io, path.string() + ": cannot read");
    std::stringstream text;
    text << f.rdbuf();
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
        std::string why = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 3: ..."
        const auto at = why.find(" at line ");
        why = why.substr(at == std::string::npos ? 0 : at + 4);
        throw Error(kind, path.string() + ": not valid JSON (" + why.substr(0, why.find("; last read")) + ")");
    }
    if (!doc.is_object() || !doc.contains("format") || doc["format"] != format)
        throw Error(kind, path.string() + ": not a " + what);
    const auto v = doc.contains("format_version") ? doc["format_version"] : nlohmann::json();
    const bool same = (v.is_number() && v.get<double>() == version) || (v.is_boolean() && v.get<bool>() && version == 1);
    if (!same) throw Error(kind, path.string() + ": format_version " + py_repr(v) + ", this jzi reads " + std::to_string(version));
    for (const auto& key : required)
        if (!doc.contains(key)) throw Error(kind, path.string() + ": missing '" + key + "'");
    return doc;
}

Region region_from_json(const nlohmann::json& d) {
    if (!d.is_object()) throw std::invalid_argument("'region' must be an object");
    for (const char* key : {"center_lat", "center_lon"})
        if (!d.contains(key)) throw std::invalid_argument(std::string("region is missing ['") + key + "']");
    Region r;
    auto number = [&](const char* key, double& out) {
        if (!d.contains(key)) return;
        if (!d[key].is_number()) throw std::invalid_argument(std::string("region.") + key + " must be a number");
        out = d[key].get<double>();
    };
    auto integer = [&](const char* key, int& out) {
        if (!d.contains(key)) return;
        const auto& v = d[key];
        if (!v.is_number() || v.get<double>() != std::floor(v.get<double>()) || std::fabs(v.get<double>()) > 1e6)
            throw std::invalid_argument(std::string("region.") + key + " must be an integer");
        out = static_cast<int>(v.get<double>());
    };
    number("center_lat", r.center_lat);
    number("center_lon", r.center_lon);
    number("size_m", r.size_m);
    integer("grid", r.grid);
    integer("steps", r.steps);
    integer("view_px", r.view_px);
    if (!std::isfinite(r.center_lat) || !std::isfinite(r.center_lon) || !std::isfinite(r.size_m) || r.size_m <= 0)
        throw std::invalid_argument("region centre and size must be finite, the size positive");
    return r;
}

Manifest load_manifest(const fs::path& bundle_dir, bool verify) {
    const fs::path root = bundle_dir;
    const fs::path path = root / kManifest;
    if (!fs::is_directory(root)) throw BundleError(root.string() + ": not a bundle directory");
    if (!fs::is_regular_file(path))
        throw BundleError(root.string() + ": no " + kManifest + "; is this a jzi bundle (made by jzi-export)?");
    Manifest m;
    m.root = root;
    m.doc = read_json_document(path, kFormat, kFormatVersion, "jzi bundle manifest", ErrorKind::Bundle,
                               {"region", "steps", "grid", "n_actions", "width", "image_size", "street_size", "decoder",
                                "files", "tensors", "encoder_id", "precision"});
    const auto& doc = m.doc;
    const auto& files = doc["files"];
    if (!files.is_object()) throw BundleError(path.string() + ": 'files' must be an object");
    for (const char* role : kGraphs)
        if (!files.contains(role)) throw BundleError(path.string() + ": no '" + role + "' graph listed");
    const fs::path real_root = fs::canonical(root);
    for (auto it = files.begin(); it != files.end(); ++it) {
        const auto& entry = it.value();
        const std::string rel = entry.is_object() && entry.contains("path") && entry["path"].is_string()
                                    ? entry["path"].get<std::string>() : "";
        const bool plain = !rel.empty() && rel.find('\0') == std::string::npos;
        const fs::path target = plain ? fs::weakly_canonical(root / rel) : fs::path();
        if (!plain || !inside(real_root, target))
            throw BundleError(path.string() + ": file entry '" + it.key() + "' points outside the bundle");
        if (!fs::is_regular_file(target)) throw BundleError(root.string() + ": " + rel + " is missing");
        const std::string sha = entry.contains("sha256") && entry["sha256"].is_string() ? entry["sha256"].get<std::string>() : "";
        if (verify && sha256_file(target) != sha)
            throw BundleError(root.string() + ": " + rel + " does not match its sha256 in the manifest (corrupt or edited)");
        m.files[it.key()] = FileEntry{target, sha};
    }

    // What the runtime reads below; the Python reader trusts these types, here each is checked.
    m.grid = positive_int(doc, "grid", path, 16);
    m.steps = positive_int(doc, "steps", path, 12);
    m.n_actions = positive_int(doc, "n_actions", path, 256);
    m.width = positive_int(doc, "width", path, 1 << 16);
    m.image_size = positive_int(doc, "image_size", path, 1 << 14);
    if (m.n_actions != m.grid * m.grid) throw BundleError(path.string() + ": 'n_actions' must be grid * grid");
    const auto& street = doc["street_size"];
    if (!street.is_array() || street.size() != 2 || street[0] != m.image_size || street[1] != 2 * m.image_size)
        throw BundleError(path.string() + ": 'street_size' must be [image_size, 2 * image_size]");
    const auto& dec = doc["decoder"];
    if (!dec.is_object()) throw BundleError(path.string() + ": 'decoder' must be an object");
    for (const char* key : {"layers", "heads", "head_dim", "cache_len"})
        if (!dec.contains(key)) throw BundleError(path.string() + ": decoder is missing '" + key + "'");
    m.layers = positive_int(dec, "layers", path, 1024);
    m.heads = positive_int(dec, "heads", path, 1024);
    m.head_dim = positive_int(dec, "head_dim", path, 1 << 16);
    m.cache_len = positive_int(dec, "cache_len", path, 1 << 16);
    if (m.cache_len < 2 * m.steps) throw BundleError(path.string() + ": decoder.cache_len is shorter than 2 * steps");
    if (!doc["precision"].is_string()) throw BundleError(path.string() + ": 'precision' must be a string");
    m.precision = doc["precision"].get<std::string>();
    if (!doc["encoder_id"].is_string() || doc["encoder_id"].get<std::string>().empty())
        throw BundleError(path.string() + ": 'encoder_id' must be a non-empty string");
    m.encoder_id = doc["encoder_id"].get<std::string>();
    try {
        m.region = region_from_json(doc["region"]);
    } catch (const std::invalid_argument& e) {
        throw BundleError(path.string() + ": bad region (" + e.what() + ")");
    }
    const auto& tensors = doc["tensors"];
    if (!tensors.is_object()) throw BundleError(path.string() + ": 'tensors' must be an object");
    for (const char* graph : kGraphs) {
        if (!tensors.contains(graph)) throw BundleError(path.string() + ": tensors." + graph + " is missing");
        m.tensors[graph] = graph_spec(tensors[graph], graph, path);
    }
    for (const char* graph : {"view_encoder", "street_encoder"}) {
        const auto& g = m.tensors[graph];
        if (g.inputs.size() != 1 || g.outputs.size() != 1)
            throw BundleError(path.string() + ": tensors." + graph + " must have one input and one output");
    }
    return m;
}

}  // namespace jzi
