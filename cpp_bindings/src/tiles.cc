// Tile store reading: the same validation and messages as runtime/tiles.py, arrays mapped with mmap.
#include "jzi/tiles.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "jzi/bundle.h"
#include "jzi/error.h"

namespace jzi {
namespace {
constexpr const char* kFormat = "jzi-tiles";
constexpr int kFormatVersion = 2;  // tile store format 2: per-block checksums (runtime/tiles.py)
constexpr const char* kIndex = "tiles.json";

struct Limit {
    const char* key;
    int64_t lo, hi;
};
constexpr Limit kLimits[] = {{"grid", 2, 16}, {"steps", 1, 12}, {"dim", 1, 1 << 16}, {"view_px", 1, 1 << 14}};

std::string file_for(const std::string& dtype) { return dtype == "float16" ? "embeddings.f16" : "embeddings.f32"; }

size_t itemsize(const std::string& dtype) { return dtype == "float16" ? 2 : dtype == "float32" ? 4 : 1; }

std::string shape_repr(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

bool same_number(const nlohmann::json& v, double x) { return v.is_number() && !v.is_boolean() && v.get<double>() == x; }

// The levels table written by jzi-tiles, recomputed from the region and compared entry by entry.
bool levels_match(const nlohmann::json& levels, const Region& r) {
    if (!levels.is_array() || static_cast<int>(levels.size()) != r.steps) return false;
    for (int lvl = 0; lvl < r.steps; ++lvl) {
        const auto& e = levels[lvl];
        if (!e.is_object() || e.size() != 5) return false;
        const double want[] = {double(lvl), double(r.level_offset(lvl)), double(r.n_views(lvl)), r.level_size_m(lvl),
                               r.meters_per_pixel(lvl)};
        const char* keys[] = {"level", "offset", "count", "size_m", "meters_per_pixel"};
        for (int i = 0; i < 5; ++i)
            if (!e.contains(keys[i]) || !same_number(e[keys[i]], want[i])) return false;
    }
    return true;
}

struct Checked {
    std::string name, dtype;
    std::vector<int64_t> shape;
    size_t bytes = 0;
    int64_t block_rows = 0;
    std::vector<std::string> block_sha256;
};

Checked check_file_entry(const fs::path& root, const fs::path& index, const std::string& role, const nlohmann::json& entry,
                         const std::string& dtype, const std::vector<int64_t>& shape) {
    const std::string where = index.string() + ": files." + role;
    if (!entry.is_object()) throw TileStoreError(where + " must be an object");
    const auto name_v = entry.contains("path") ? entry["path"] : nlohmann::json();
    const std::string name = name_v.is_string() ? name_v.get<std::string>() : "";
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || name.find('\0') != std::string::npos)
        throw TileStoreError(where + ".path must be a plain file name inside the store");
    const std::vector<std::string> allowed = dtype.empty() ? std::vector<std::string>{"float16", "float32"}
                                                           : std::vector<std::string>{dtype};
    const auto dt = entry.contains("dtype") ? entry["dtype"] : nlohmann::json();
    bool ok = false;
    for (const auto& a : allowed) ok = ok || (dt.is_string() && dt.get<std::string>() == a);
    if (!ok) {
        std::string list = "[";
        for (size_t i = 0; i < allowed.size(); ++i) list += (i ? ", '" : "'") + allowed[i] + "'";
        throw TileStoreError(where + ".dtype must be one of " + list + "], got " + py_repr(dt));
    }
    const std::string real_dtype = dt.get<std::string>();
    if (dtype.empty() && file_for(real_dtype) != name)
        throw TileStoreError(index.string() + ": " + real_dtype + " embeddings must be in " + file_for(real_dtype));
    if (entry.contains("byte_order") && entry["byte_order"] != "little") throw TileStoreError(where + " must be little-endian");
    nlohmann::json want = shape;
    if (!entry.contains("shape") || entry["shape"] != want)
        throw TileStoreError(where + ".shape is " + (entry.contains("shape") ? py_repr(entry["shape"]) : "None") +
                             ", the region needs " + shape_repr(shape));
    size_t nbytes = itemsize(real_dtype);
    for (int64_t d : shape) nbytes *= static_cast<size_t>(d);
    const fs::path path = root / name;
    if (!fs::is_regular_file(path)) throw TileStoreError(root.string() + ": " + name + " is missing");
    const auto actual = fs::file_size(path);
    if (!same_number(entry.contains("bytes") ? entry["bytes"] : nlohmann::json(), double(nbytes)) || actual != nbytes)
        throw TileStoreError(root.string() + ": " + name + " holds " + std::to_string(actual) + " bytes, shape " +
                             shape_repr(shape) + " needs " + std::to_string(nbytes) + " (truncated or corrupt)");
    Checked c{name, real_dtype, shape, nbytes, 0, {}};
    // Per-block checksums (optional): both fields or neither, one 64-digit hex sha256 per block.
    if (entry.contains("block_rows") || entry.contains("block_sha256")) {
        const auto br = entry.contains("block_rows") ? entry["block_rows"] : nlohmann::json();
        if (!br.is_number_integer() || br.get<int64_t>() < 1)
            throw TileStoreError(where + ".block_rows must be a positive integer, got " + py_repr(br));
        c.block_rows = br.get<int64_t>();
        const int64_t blocks = (shape[0] + c.block_rows - 1) / c.block_rows;
        const auto bs = entry.contains("block_sha256") ? entry["block_sha256"] : nlohmann::json();
        bool good = bs.is_array() && static_cast<int64_t>(bs.size()) == blocks;
        for (size_t i = 0; good && i < bs.size(); ++i) {
            good = bs[i].is_string() && bs[i].get<std::string>().size() == 64 &&
                   bs[i].get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos;
            if (good) c.block_sha256.push_back(bs[i].get<std::string>());
        }
        if (!good)
            throw TileStoreError(where + ".block_sha256 must list " + std::to_string(blocks) + " sha256 hex digests (one per " +
                                 std::to_string(c.block_rows) + " rows)");
    }
    return c;
}
}  // namespace

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // Inf / NaN
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;  // +-0
    } else {  // subnormal half: normalise
        exp = 113;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

MappedFile::MappedFile(const fs::path& path, size_t bytes, size_t row_bytes, int64_t block_rows, std::vector<std::string> block_sha256)
    : path_(path), size_(bytes), row_bytes_(row_bytes), block_rows_(block_rows), block_sha256_(std::move(block_sha256)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw TileStoreError(path.string() + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != bytes) {  // changed since it was checked
        ::close(fd);
        throw TileStoreError(path.string() + ": changed while opening (size " + std::to_string(st.st_size) + ")");
    }
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw TileStoreError(path.string() + ": cannot map (" + std::strerror(errno) + ")");
    data_ = static_cast<const uint8_t*>(p);
    if (!block_sha256_.empty()) {
        verified_.reset(new std::atomic<bool>[block_sha256_.size()]);
        for (size_t i = 0; i < block_sha256_.size(); ++i) verified_[i] = false;
    }
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::check_block(int64_t row) const {
    if (block_sha256_.empty()) return;
    const size_t block = static_cast<size_t>(row / block_rows_);
    if (verified_[block].load(std::memory_order_acquire)) return;
    const size_t start = block * block_rows_ * row_bytes_;
    const size_t end = std::min(size_, start + block_rows_ * row_bytes_);
    if (sha256_bytes(data_ + start, end - start) != block_sha256_[block]) {
        const int64_t first = static_cast<int64_t>(block) * block_rows_;
        const int64_t last = first + static_cast<int64_t>((end - start) / row_bytes_) - 1;
        throw TileStoreError(path_.string() + ": rows " + std::to_string(first) + ".." + std::to_string(last) +
                             " do not match their sha256 in tiles.json (corrupt or edited)");
    }
    verified_[block].store(true, std::memory_order_release);
}

TileStore::TileStore(const fs::path& root) : path_(root) {
    if (!fs::is_directory(root)) throw TileStoreError(root.string() + ": not a tile store directory");
    const fs::path index = root / kIndex;
    if (!fs::is_regular_file(index)) {
        const std::string name = root.filename().empty() ? root.parent_path().filename().string() : root.filename().string();
        const bool partial = name.size() >= 8 && name.compare(name.size() - 8, 8, ".partial") == 0;
        throw TileStoreError(root.string() + ": no " + kIndex + "; is this a jzi tile store (made by jzi-tiles build)?" +
                             (partial ? " (an unfinished build: run jzi-tiles build again to resume it)" : ""));
    }
    meta_ = read_json_document(index, kFormat, kFormatVersion, "jzi tile store index", ErrorKind::TileStore,
                               {"region", "grid", "steps", "view_px", "dim", "levels", "files", "encoder_id"});
    const auto& m = meta_;
    for (const auto& lim : kLimits) {
        const auto& v = m[lim.key];
        if (!v.is_number_integer() || v.get<int64_t>() < lim.lo || v.get<int64_t>() > lim.hi)
            throw TileStoreError(index.string() + ": '" + lim.key + "' must be an integer in " + std::to_string(lim.lo) + ".." +
                                 std::to_string(lim.hi) + ", got " + py_repr(v));
    }
    if (!m["region"].is_object()) throw TileStoreError(index.string() + ": 'region' must be an object");
    try {
        region_ = region_from_json(m["region"]);
    } catch (const std::invalid_argument& e) {
        throw TileStoreError(index.string() + ": bad region (" + e.what() + ")");
    }
    if (region_.grid != m["grid"].get<int>() || region_.steps != m["steps"].get<int>() || region_.view_px != m["view_px"].get<int>())
        throw TileStoreError(index.string() + ": region does not agree with grid/steps/view_px");
    if (!levels_match(m["levels"], region_)) throw TileStoreError(index.string() + ": the levels table does not match the region");
    if (!m["encoder_id"].is_string() || m["encoder_id"].get<std::string>().empty())
        throw TileStoreError(index.string() + ": 'encoder_id' must be a non-empty string");
    encoder_id_ = m["encoder_id"].get<std::string>();
    dim_ = m["dim"].get<int>();
    const auto& files = m["files"];
    if (!files.is_object() || !files.contains("embeddings")) throw TileStoreError(index.string() + ": no embeddings file listed");
    const int64_t total = region_.total_views();
    if (files.contains("pixels")) {
        const auto& pe = files["pixels"];
        nlohmann::json px = 0;
        if (pe.is_object()) {
            const auto shape = pe.contains("shape") ? pe["shape"] : nlohmann::json::array({nullptr, 0});
            px = shape.is_array() && shape.size() > 1 ? shape[1] : nlohmann::json();
        }
        if (!px.is_number_integer() || px.get<int64_t>() < 1 || px.get<int64_t>() > region_.view_px)
            throw TileStoreError(index.string() + ": bad pixel pyramid size " + py_repr(px));
        thumb_px_ = px.get<int>();
    }
    for (auto it = files.begin(); it != files.end(); ++it) {
        if (it.key() != "embeddings" && it.key() != "pixels") throw TileStoreError(index.string() + ": unknown file role '" + it.key() + "'");
        const bool emb = it.key() == "embeddings";
        const std::vector<int64_t> shape = emb ? std::vector<int64_t>{total, dim_} : std::vector<int64_t>{total, thumb_px_, thumb_px_, 3};
        Checked c = check_file_entry(root, index, it.key(), it.value(), emb ? "" : "uint8", shape);
        const size_t row_bytes = c.bytes / static_cast<size_t>(total);
        auto mapped = std::make_unique<MappedFile>(root / c.name, c.bytes, row_bytes, c.block_rows, std::move(c.block_sha256));
        if (emb) {
            dtype_ = c.dtype;
            embeddings_ = std::move(mapped);
        } else {
            pixels_ = std::move(mapped);
        }
    }
}

void TileStore::read_row(int64_t row, float* out) const {
    if (row < 0 || row >= total_views())
        throw TileStoreError(path_.string() + ": row " + std::to_string(row) + " is outside the store");
    embeddings_->check_block(row);
    if (dtype_ == "float16") {
        const uint8_t* p = embeddings_->data() + static_cast<size_t>(row) * dim_ * 2;
        for (int i = 0; i < dim_; ++i) out[i] = half_to_float(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
    } else {
        std::memcpy(out, embeddings_->data() + static_cast<size_t>(row) * dim_ * 4, static_cast<size_t>(dim_) * 4);
    }
    for (int i = 0; i < dim_; ++i)
        if (!std::isfinite(out[i]))
            throw TileStoreError(path_.string() + ": embedding row " + std::to_string(row) + " holds NaN or Inf");
}

const uint8_t* TileStore::pixels(int64_t row) const {
    if (!pixels_ || row < 0 || row >= total_views()) return nullptr;
    pixels_->check_block(row);
    return pixels_->data() + static_cast<size_t>(row) * thumb_px_ * thumb_px_ * 3;
}

}  // namespace jzi
