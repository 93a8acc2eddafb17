// Image decoding with OpenCV's C++ API, mirroring runtime/images.py check for check.
#include "jzi/images.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jzi/error.h"

namespace jzi {
namespace {
namespace fs = std::filesystem;

// The street stretch of DESIGN §2 and jzi.runtime.images.STREET_INTERPOLATION: the authors'
// albumentations Resize interpolation, bit-exact across OpenCV versions by design.
constexpr int kStreetInterpolation = cv::INTER_LINEAR_EXACT;

struct Truncated {};  // a header field beyond the data: Python's struct.error / IndexError

class Bytes {
public:
    Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
    size_t size() const { return n_; }
    uint8_t at(size_t i) const {
        if (i >= n_) throw Truncated{};
        return d_[i];
    }
    bool starts(size_t off, const char* s, size_t len) const { return off + len <= n_ && std::memcmp(d_ + off, s, len) == 0; }
    // Unsigned integer of `len` bytes at `off`, big or little endian; all bytes must be there.
    uint64_t uint(size_t off, size_t len, bool big) const {
        if (off > n_ || off + len > n_) throw Truncated{};
        uint64_t v = 0;
        for (size_t i = 0; i < len; ++i) v |= uint64_t(d_[off + i]) << (8 * (big ? len - 1 - i : i));
        return v;
    }
    // int.from_bytes(data[off:off+len], "little"): whatever bytes are there (fewer when truncated).
    uint64_t from_bytes_le(size_t off, size_t len) const {
        uint64_t v = 0;
        for (size_t i = 0; i < len && off + i < n_; ++i) v |= uint64_t(d_[off + i]) << (8 * i);
        return v;
    }

private:
    const uint8_t* d_;
    size_t n_;
};

std::pair<int64_t, int64_t> jpeg_size(const Bytes& b) {
    size_t i = 2;
    while (i + 4 <= b.size()) {
        if (b.at(i) != 0xFF) {
            ++i;
            continue;
        }
        const uint8_t marker = b.at(i + 1);
        if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0xFF) {
            i += marker == 0xFF ? 1 : 2;
            continue;
        }
        const uint64_t length = b.uint(i + 2, 2, true);
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size
        if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
            const int64_t h = int64_t(b.uint(i + 5, 2, true)), w = int64_t(b.uint(i + 7, 2, true));
            return {w, h};
        }
        i += 2 + length;
    }
    throw ImageError("JPEG without a frame header");
}

std::pair<int64_t, int64_t> webp_size(const Bytes& b) {
    if (b.starts(12, "VP8X", 4)) return {int64_t(b.from_bytes_le(24, 3)) + 1, int64_t(b.from_bytes_le(27, 3)) + 1};
    if (b.starts(12, "VP8L", 4)) {
        const uint64_t bits = b.from_bytes_le(21, 4);
        return {int64_t(bits & 0x3FFF) + 1, int64_t((bits >> 14) & 0x3FFF) + 1};
    }
    if (b.starts(12, "VP8 ", 4)) return {int64_t(b.uint(26, 2, false) & 0x3FFF), int64_t(b.uint(28, 2, false) & 0x3FFF)};
    throw ImageError("WebP without a known image chunk");
}

std::pair<int64_t, int64_t> tiff_size(const Bytes& b) {
    const bool big = b.at(0) == 'M';
    const uint64_t ifd = b.uint(4, 4, big);
    const uint64_t count = b.uint(ifd, 2, big);
    int64_t width = -1, height = -1;
    for (uint64_t n = 0; n < count; ++n) {
        const uint64_t e = ifd + 2 + 12 * n;
        const uint64_t tag = b.uint(e, 2, big), typ = b.uint(e + 2, 2, big);
        if (tag == 256 || tag == 257) {  // ImageWidth, ImageLength (SHORT or LONG)
            const int64_t v = int64_t(b.uint(e + 8, typ == 3 ? 2 : 4, big));
            (tag == 256 ? width : height) = v;
        }
    }
    if (width < 0 || height < 0) throw ImageError("TIFF without width/height tags");
    return {width, height};
}

std::string size_text(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }
}  // namespace

std::optional<std::pair<int64_t, int64_t>> header_size(const uint8_t* data, size_t size) {
    const Bytes b(data, size);
    try {
        if (b.starts(0, "\x89PNG\r\n\x1a\n", 8)) return std::make_pair(int64_t(b.uint(16, 4, true)), int64_t(b.uint(20, 4, true)));
        if (b.starts(0, "\xff\xd8", 2)) return jpeg_size(b);
        if (b.starts(0, "RIFF", 4) && b.starts(8, "WEBP", 4)) return webp_size(b);
        if (b.starts(0, "II*\0", 4) || b.starts(0, "MM\0*", 4)) return tiff_size(b);
        if (b.starts(0, "BM", 2)) {
            const auto w = static_cast<int32_t>(b.uint(18, 4, false)), h = static_cast<int32_t>(b.uint(22, 4, false));
            return std::make_pair(std::llabs(int64_t(w)), std::llabs(int64_t(h)));
        }
    } catch (const Truncated&) {
        throw ImageError("truncated or corrupt image header");
    }
    return std::nullopt;
}

// 16-bit or float -> 8 bit, channels kept (the first half of the Python side's to_rgb8).
static cv::Mat to_8bit(const cv::Mat& in) {
    if (in.depth() == CV_8U) return in;
    const cv::Mat img = in.isContinuous() ? in : in.clone();
    cv::Mat out(img.size(), CV_MAKETYPE(CV_8U, img.channels()));
    const size_t n = img.total() * img.channels();
    uint8_t* dst = out.ptr<uint8_t>();
    if (img.depth() == CV_16U) {
        const uint16_t* src = img.ptr<uint16_t>();
        for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>((uint32_t(src[i]) + 128) / 257);  // 65535 -> 255, rounded
        return out;
    }
    cv::Mat f;
    img.convertTo(f, CV_32F);
    const float* src = f.ptr<float>();
    float hi = 0.0f;  // max(initial=0)
    for (size_t i = 0; i < n; ++i) hi = std::max(hi, src[i]);
    const float scale = hi <= 1.0f ? 255.0f : 1.0f;  // a 0..1 image is scaled to 0..255
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(std::nearbyint(std::min(255.0f, std::max(0.0f, src[i] * scale))));
    return out;
}

cv::Mat to_rgb8(const cv::Mat& in) {
    if (in.empty() || in.dims != 2) throw ImageError("an image array must be [H, W], [H, W, 3] or [H, W, 4]");
    const cv::Mat img = to_8bit(in);
    cv::Mat out;
    if (img.channels() == 1) {
        cv::cvtColor(img, out, cv::COLOR_GRAY2RGB);
    } else if (img.channels() == 4) {
        cv::cvtColor(img, out, cv::COLOR_RGBA2RGB);  // alpha dropped: the photo is treated as opaque
    } else if (img.channels() == 3) {
        out = img.isContinuous() ? img : img.clone();
    } else {
        throw ImageError("an image array must be [H, W], [H, W, 3] or [H, W, 4], got " + std::to_string(img.channels()) + " channels");
    }
    return out;
}

cv::Mat decode_image(const uint8_t* data, size_t size, int64_t max_pixels) {
    if (size == 0) throw ImageError("empty file");
    const auto hs = header_size(data, size);
    if (hs && hs->first * hs->second > max_pixels)
        throw ImageError(size_text(hs->first, hs->second) + " pixels is over the cap of " + std::to_string(max_pixels) +
                         " (decompression bomb?)");
    if (size > size_t(INT32_MAX)) throw ImageError("the file is over 2 GB");
    cv::Mat img;
    try {  // IMREAD_COLOR applies EXIF orientation (IMREAD_UNCHANGED would not); ANYDEPTH keeps 16 bits
        img = cv::imdecode(cv::Mat(1, static_cast<int>(size), CV_8U, const_cast<uint8_t*>(data)), cv::IMREAD_COLOR | cv::IMREAD_ANYDEPTH);
    } catch (const cv::Exception&) {
        img.release();
    }
    if (img.empty()) throw ImageError("not a readable image (unknown format or corrupt data)");
    if (int64_t(img.rows) * img.cols > max_pixels)
        throw ImageError(size_text(img.cols, img.rows) + " pixels is over the cap of " + std::to_string(max_pixels));
    cv::Mat rgb;
    cv::cvtColor(to_8bit(img), rgb, cv::COLOR_BGR2RGB);  // IMREAD_COLOR gives 3 channels, BGR
    return rgb;
}

cv::Mat read_image(const fs::path& path, int64_t max_pixels) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw ImageError(path.string() + ": is a directory");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw ImageError(path.string() + ": cannot read (" + std::strerror(errno) + ")");
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (f.bad()) throw ImageError(path.string() + ": cannot read (read error)");
    try {
        return decode_image(data.data(), data.size(), max_pixels);
    } catch (const Error& e) {
        throw ImageError(path.string() + ": " + e.what());
    }
}

void street_input(const cv::Mat& rgb, int image_size, uint8_t* out) {
    cv::Mat dst(image_size, 2 * image_size, CV_8UC3, out);
    cv::resize(rgb, dst, cv::Size(2 * image_size, image_size), 0, 0, kStreetInterpolation);
    if (dst.data != out) throw Error(ErrorKind::Internal, "street_input: OpenCV reallocated the output");
}

std::vector<fs::path> list_images(const fs::path& folder) {
    static const char* suffixes[] = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"};
    std::vector<fs::path> out;
    for (const auto& entry : fs::directory_iterator(folder)) {
        if (!entry.is_regular_file()) continue;
        std::string ext = entry.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
        for (const char* s : suffixes)
            if (ext == s) out.push_back(entry.path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace jzi
