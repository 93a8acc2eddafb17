// Tile store reading: the same validation and messages as runtime/tiles.py, arrays mapped with mmap.
#include "jzi/tiles.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

// INDEX_SCHEMAS[2] of runtime/tiles.py: every field of tiles.json a reader uses.
const schema::Validator& index_schema() {
    using namespace schema;
    static const Validator hex = string({}, 64);
    static const Validator file = obj({{"path", string()},
                                       {"dtype", string({"float16", "float32", "uint8"})},
                                       {"shape", list_of(integer(0, int64_t(1) << 40), -1, 4)},
                                       {"bytes", integer(0, int64_t(1) << 50)},
                                       {"sha256", hex},
                                       {"block_rows", integer(1, int64_t(1) << 40)},
                                       {"block_sha256", list_of(hex)}},
                                      {{"byte_order", string({"little"})}});
    static const Validator index = obj({{"region", region()},
                                        {"grid", integer(2, 16)},
                                        {"steps", integer(1, 12)},
                                        {"view_px", integer(1, 1 << 14)},
                                        {"dim", integer(1, 1 << 16)},
                                        {"levels", list_of(any_value())},
                                        {"encoder_id", string()},
                                        {"files", mapping(file)}});
    return index;
}

std::string file_for(const std::string& dtype) { return dtype == "float16" ? "embeddings.f16" : "embeddings.f32"; }

size_t itemsize(const std::string& dtype) { return dtype == "float16" ? 2 : dtype == "float32" ? 4 : 1; }

std::string shape_repr(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

bool same_number(const Json& v, double x) { return v.is_number() && !v.is_boolean() && v.get<double>() == x; }

// The levels table written by jzi-tiles, recomputed from the region and compared entry by entry.
bool levels_match(const Json& levels, const Region& r) {
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
    size_t bytes = 0;
    int64_t block_rows = 0;
    std::vector<std::string> block_sha256;
};

// _check_file_entry of runtime/tiles.py: the entry (already through the schema) against the region's
// shape, then the file itself: a regular file of the store's own, exactly the size the entry needs.
Checked check_file_entry(const fs::path& root, const fs::path& index, const std::string& role, const Json& entry,
                         const std::string& dtype, const std::vector<int64_t>& shape) {
    const std::string where = index.string() + ": files." + role;
    const std::string name = entry["path"].get<std::string>();
    if (name.find('/') != std::string::npos || name[0] == '.')
        throw TileStoreError(where + ".path must be a plain file name inside the store, got " + schema::py_repr(entry["path"]));
    const std::vector<std::string> allowed = dtype.empty() ? std::vector<std::string>{"float16", "float32"} : std::vector<std::string>{dtype};
    const std::string real_dtype = entry["dtype"].get<std::string>();
    if (std::find(allowed.begin(), allowed.end(), real_dtype) == allowed.end())
        throw TileStoreError(where + ".dtype must be one of " + schema::py_repr(Json(allowed)) + ", got " + schema::py_repr(entry["dtype"]));
    if (dtype.empty() && file_for(real_dtype) != name)
        throw TileStoreError(index.string() + ": " + real_dtype + " embeddings must be in " + file_for(real_dtype) + ", not " + name);
    if (entry["shape"] != Json(shape))
        throw TileStoreError(where + ".shape is " + schema::py_repr(entry["shape"]) + ", the region needs " + shape_repr(shape));
    size_t nbytes = itemsize(real_dtype);
    for (int64_t d : shape) nbytes *= static_cast<size_t>(d);
    const std::string of = " of " + real_dtype + " needs " + std::to_string(nbytes);
    if (entry["bytes"] != Json(nbytes))
        throw TileStoreError(where + ".bytes is " + schema::py_repr(entry["bytes"]) + ", shape " + shape_repr(shape) + of);
    const int64_t block_rows = entry["block_rows"].get<int64_t>();
    const int64_t blocks = (shape[0] + block_rows - 1) / block_rows;
    if (static_cast<int64_t>(entry["block_sha256"].size()) != blocks)
        throw TileStoreError(where + ".block_sha256 holds " + std::to_string(entry["block_sha256"].size()) + " digests, " +
                             std::to_string(shape[0]) + " rows in blocks of " + std::to_string(block_rows) + " need " + std::to_string(blocks));
    const fs::path path = root / name;
    if (fs::is_symlink(path) || (fs::exists(path) && fs::canonical(path).parent_path() != fs::canonical(root)))
        throw TileStoreError(root.string() + ": " + name + " is a link; a store's arrays must be its own regular files");
    if (!fs::is_regular_file(path)) throw TileStoreError(root.string() + ": " + name + " is missing");
    const auto actual = fs::file_size(path);
    if (actual != nbytes)
        throw TileStoreError(root.string() + ": " + name + " holds " + std::to_string(actual) + " bytes, shape " + shape_repr(shape) + of +
                             " (truncated or corrupt)");
    return Checked{name, real_dtype, nbytes, block_rows, entry["block_sha256"].get<std::vector<std::string>>()};
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

MappedFile::MappedFile(const fs::path& path, size_t bytes, int64_t block_rows, std::vector<std::string> block_sha256)
    : path_(path), size_(bytes), block_rows_(block_rows), block_sha256_(std::move(block_sha256)),
      verified_(new std::atomic<bool>[block_sha256_.size()]) {
    for (size_t i = 0; i < block_sha256_.size(); ++i) verified_[i] = false;
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
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// The first read of a block of rows checks it (runtime/tiles.py's _verify_block): its sha256, and for
// embeddings that every value in it is finite. `row` is the row being read (named in the message).
void TileStore::check_block(const MappedFile& file, int64_t row) const {
    const int64_t block = row / file.block_rows();
    if (file.verified(block)) return;
    const int64_t first = block * file.block_rows();
    const int64_t rows = std::min(file.block_rows(), total_views() - first);
    const size_t row_bytes = file.size() / static_cast<size_t>(total_views());
    const uint8_t* data = file.data() + static_cast<size_t>(first) * row_bytes;
    if (sha256_bytes(data, static_cast<size_t>(rows) * row_bytes) != file.block_sha256(block))
        throw TileStoreError(path_.string() + ": row " + std::to_string(row) + " of " + file.path().filename().string() +
                             " is in a block (rows " + std::to_string(first) + ".." + std::to_string(first + rows - 1) +
                             ") that does not match its checksum in " + kIndex + " (corrupt or edited); rebuild the store");
    if (&file == embeddings_.get()) {
        std::vector<float> values(static_cast<size_t>(dim_));
        for (int64_t r = first; r < first + rows; ++r) {
            to_float(r, values.data());
            for (float v : values)
                if (!std::isfinite(v))
                    throw TileStoreError(path_.string() + ": embedding row " + std::to_string(r) + " holds NaN or Inf; rebuild the store");
        }
    }
    file.mark_verified(block);
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
    meta_ = schema::read_json_document(index, kFormat, {{kFormatVersion, index_schema()}}, "jzi tile store index", ErrorKind::TileStore,
                                       " (a store without block checksums: run `jzi-tiles upgrade " + root.string() +
                                           "` to check it and add them, or rebuild it)");
    const Json& m = meta_;
    region_ = region_from_json(m["region"]);
    const std::string got = std::to_string(region_.grid) + "/" + std::to_string(region_.steps) + "/" + std::to_string(region_.view_px);
    const std::string want = std::to_string(m["grid"].get<int>()) + "/" + std::to_string(m["steps"].get<int>()) + "/" +
                             std::to_string(m["view_px"].get<int>());
    if (got != want)
        throw TileStoreError(index.string() + ": region.grid/steps/view_px " + got + " disagree with grid/steps/view_px " + want);
    if (!levels_match(m["levels"], region_)) throw TileStoreError(index.string() + ": the levels table does not match the region");
    const Json& files = m["files"];
    if (!files.contains("embeddings")) throw TileStoreError(index.string() + ": no embeddings file listed");
    encoder_id_ = m["encoder_id"].get<std::string>();
    dim_ = m["dim"].get<int>();
    const int64_t total = region_.total_views();
    if (files.contains("pixels")) {
        const Json& shape = files["pixels"]["shape"];
        const Json px = shape.size() > 1 ? shape[1] : Json();
        if (!px.is_number_integer() || px.get<int64_t>() < 1 || px.get<int64_t>() > region_.view_px)
            throw TileStoreError(index.string() + ": files.pixels.shape[1] must be a thumbnail size in 1.." + std::to_string(region_.view_px) +
                                 ", got " + schema::py_repr(px));
        thumb_px_ = px.get<int>();
    }
    std::vector<std::pair<std::string, Checked>> checked;
    for (auto it = files.begin(); it != files.end(); ++it) {
        if (it.key() != "embeddings" && it.key() != "pixels") throw TileStoreError(index.string() + ": unknown file role '" + it.key() + "'");
        const bool emb = it.key() == "embeddings";
        const std::vector<int64_t> shape = emb ? std::vector<int64_t>{total, dim_} : std::vector<int64_t>{total, thumb_px_, thumb_px_, 3};
        checked.emplace_back(it.key(), check_file_entry(root, index, it.key(), it.value(), emb ? "" : "uint8", shape));
    }
    for (auto& [role, c] : checked) {
        auto mapped = std::make_unique<MappedFile>(root / c.name, c.bytes, c.block_rows, std::move(c.block_sha256));
        if (role == "embeddings") {
            dtype_ = c.dtype;
            embeddings_ = std::move(mapped);
        } else {
            pixels_ = std::move(mapped);
        }
    }
    check_block(*embeddings_, 0);  // same store: its first block is its own
}

void TileStore::to_float(int64_t row, float* out) const {
    if (dtype_ == "float16") {
        const uint8_t* p = embeddings_->data() + static_cast<size_t>(row) * dim_ * 2;
        for (int i = 0; i < dim_; ++i) out[i] = half_to_float(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
    } else {
        std::memcpy(out, embeddings_->data() + static_cast<size_t>(row) * dim_ * 4, static_cast<size_t>(dim_) * 4);
    }
}

void TileStore::read_row(int64_t row, float* out) const {
    if (row < 0 || row >= total_views())
        throw TileStoreError(path_.string() + ": row " + std::to_string(row) + " is outside the store's " + std::to_string(total_views()) + " rows");
    check_block(*embeddings_, row);
    to_float(row, out);
}

const uint8_t* TileStore::pixels(int64_t row) const {
    if (!pixels_ || row < 0 || row >= total_views()) return nullptr;
    check_block(*pixels_, row);
    return pixels_->data() + static_cast<size_t>(row) * thumb_px_ * thumb_px_ * 3;
}

}  // namespace jzi
