// The tile store: every satellite view of a region, encoded once, memory-mapped at query time.
//
// A store is a directory REGION.jzt (see runtime/tiles.py for the full format):
//
//     tiles.json        what the arrays hold; the only file a reader parses
//     embeddings.f16    raw little-endian float16 [total_views, D]   (embeddings.f32 when built in fp32)
//     pixels.u8         optional raw uint8 [total_views, P, P, 3] RGB thumbnails
//
// Row Region::level_offset(level) + Region::path_index(path) holds the view reached by `path`.
// Opening validates every field, size and shape of tiles.json (format 2, the messages of
// runtime/tiles.py) and maps the arrays with POSIX mmap; nothing proportional to the region is read.
// Each file entry carries `block_rows` and `block_sha256` (one sha256 per consecutive block of
// block_rows rows, the last possibly shorter): a block is checked the first time one of its rows is
// read (block 0 of the embeddings at open), embeddings also for NaN/Inf; a failing block is one
// Error(TileStore) line naming the store and the row.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "jzi/geometry.h"
#include "jzi/schema.h"

namespace jzi {

namespace fs = std::filesystem;

// A read-only memory map of one raw array file, with its per-block checksums and which blocks were checked.
class MappedFile {
public:
    MappedFile(const fs::path& path, size_t bytes, int64_t block_rows, std::vector<std::string> block_sha256);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const fs::path& path() const { return path_; }
    int64_t block_rows() const { return block_rows_; }
    const std::string& block_sha256(int64_t block) const { return block_sha256_[static_cast<size_t>(block)]; }
    bool verified(int64_t block) const { return verified_[static_cast<size_t>(block)].load(std::memory_order_acquire); }
    void mark_verified(int64_t block) const { verified_[static_cast<size_t>(block)].store(true, std::memory_order_release); }

private:
    fs::path path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    int64_t block_rows_ = 0;
    std::vector<std::string> block_sha256_;
    std::unique_ptr<std::atomic<bool>[]> verified_;
};

class TileStore {
public:
    explicit TileStore(const fs::path& path);  // throws Error(TileStore) with one line

    const fs::path& path() const { return path_; }
    const Json& meta() const { return meta_; }
    const Region& region() const { return region_; }
    int dim() const { return dim_; }
    const std::string& encoder_id() const { return encoder_id_; }
    const std::string& dtype() const { return dtype_; }  // "float16" or "float32"
    int64_t total_views() const { return region_.total_views(); }
    bool has_pixels() const { return pixels_ != nullptr; }
    int thumb_px() const { return thumb_px_; }

    int64_t row(int level, int64_t index) const { return region_.level_offset(level) + index; }
    // Embedding row `row` as float32 into `out` [dim]; refuses rows out of range, edited blocks, NaN/Inf.
    void read_row(int64_t row, float* out) const;
    // The RGB thumbnail [thumb_px, thumb_px, 3] of row `row` (nullptr without a pixel pyramid).
    const uint8_t* pixels(int64_t row) const;

private:
    void check_block(const MappedFile& file, int64_t row) const;  // on a block's first read: sha256, finite
    void to_float(int64_t row, float* out) const;

    fs::path path_;
    Json meta_;
    Region region_;
    int dim_ = 0, thumb_px_ = 0;
    std::string encoder_id_, dtype_;
    std::unique_ptr<MappedFile> embeddings_, pixels_;
};

// float16 (IEEE binary16) -> float32, exactly as numpy converts.
float half_to_float(uint16_t h);

}  // namespace jzi
