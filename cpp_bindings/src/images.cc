// Image decoding with OpenCV's C++ API, mirroring runtime/images.py check for check.
#include "jzi/images.h"

#include <algorithm>
#include <atomic>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgproc.hpp>

#include "jzi/codecs.h"
#include "jzi/error.h"

namespace jzi {
namespace {
namespace fs = std::filesystem;

// The street stretch of DESIGN §2 and jzi.runtime.images.STREET_INTERPOLATION: the authors'
// albumentations Resize interpolation, bit-exact across OpenCV versions by design.
constexpr int kStreetInterpolation = cv::INTER_LINEAR_EXACT;

struct Truncated {};  // a header field beyond the data, or a malformed number: Python's struct.error / ValueError

constexpr int kAvifMaxDepth = 16;  // jzi.runtime.images.AVIF_MAX_DEPTH

// The bytes of a file with Python's slicing rules: a field read past the end is Truncated.
class Bytes {
public:
    Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
    size_t size() const { return n_; }
    uint8_t at(size_t i) const {
        if (i >= n_) throw Truncated{};
        return d_[i];
    }
    // data[off:off+len] == s (a short slice compares unequal)
    bool starts(size_t off, const char* s, size_t len) const { return off <= n_ && len <= n_ - off && std::memcmp(d_ + off, s, len) == 0; }
    // Unsigned integer of `len` bytes at `off`, big or little endian; all bytes must be there (struct.unpack).
    uint64_t uint(size_t off, size_t len, bool big) const {
        if (off > n_ || len > n_ - off) throw Truncated{};
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
    std::string slice(size_t from, size_t to) const {
        to = std::min(to, n_);
        return from < to ? std::string(reinterpret_cast<const char*>(d_) + from, to - from) : std::string();
    }

private:
    const uint8_t* d_;
    size_t n_;
};

using Size = HeaderSize;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }  // bytes.isspace

// bytes.split() (any run of whitespace), at most `maxsplit` splits when >= 0
std::vector<std::string> split_ws(const std::string& s, int maxsplit = -1) {
    std::vector<std::string> out;
    size_t i = 0;
    while (true) {
        while (i < s.size() && is_space(s[i])) ++i;
        if (i >= s.size()) break;
        if (maxsplit >= 0 && int(out.size()) == maxsplit) {
            out.push_back(s.substr(i));  // the rest, trailing whitespace kept
            break;
        }
        size_t j = i;
        while (j < s.size() && !is_space(s[j])) ++j;
        out.push_back(s.substr(i, j - i));
        i = j;
    }
    return out;
}

// Python's int(bytes), whose ValueError is a Truncated header.
HeaderInt py_int(const std::string& text) {
    const auto v = HeaderInt::parse(text);
    if (!v) throw Truncated{};
    return *v;
}

// The image format named by the first bytes of a file (runtime/images.py sniff_format), or "".
std::string sniff(const Bytes& b) {
    if (b.starts(0, "\x89PNG\r\n\x1a\n", 8)) return "png";
    if (b.starts(0, "\xff\xd8\xff", 3)) return "jpeg";
    if (b.starts(0, "RIFF", 4) && b.starts(8, "WEBP", 4)) return "webp";
    for (const char* magic : {"II*\0", "MM\0*", "II+\0", "MM\0+"})
        if (b.starts(0, magic, 4)) return "tiff";
    if (b.starts(0, "BM", 2)) return "bmp";
    if (b.starts(0, "GIF87a", 6) || b.starts(0, "GIF89a", 6)) return "gif";
    if (b.starts(0, "\x00\x00\x00\x0cjP  \r\n\x87\n", 12)) return "jp2";
    if (b.starts(0, "\xff\x4f\xff\x51", 4)) return "j2k";
    if (b.starts(4, "ftyp", 4) && (b.starts(8, "avif", 4) || b.starts(8, "avis", 4))) return "avif";
    if (b.size() >= 3 && b.at(0) == 'P' && std::strchr("1234567", b.at(1)) && b.at(1) && std::strchr(" \t\r\n", b.at(2)) && b.at(2)) return "pnm";
    for (const char* magic : {"PF\n", "Pf\n", "PF\r", "Pf\r"})
        if (b.starts(0, magic, 3)) return "pfm";
    if (b.starts(0, "\x59\xa6\x6a\x95", 4)) return "sunraster";
    if (b.starts(0, "#?RADIANCE", 10) || b.starts(0, "#?RGBE", 6)) return "hdr";
    return "";
}

Size png_size(const Bytes& b) {
    if (!b.starts(12, "IHDR", 4)) throw ImageError("PNG without an IHDR header");
    return {int64_t(b.uint(16, 4, true)), int64_t(b.uint(20, 4, true))};
}

Size jpeg_size(const Bytes& b) {
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
        if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC)
            return {int64_t(b.uint(i + 7, 2, true)), int64_t(b.uint(i + 5, 2, true))};
        i += 2 + length;
    }
    throw ImageError("JPEG without a frame header");
}

Size webp_size(const Bytes& b) {
    if (b.starts(12, "VP8X", 4)) return {int64_t(b.from_bytes_le(24, 3)) + 1, int64_t(b.from_bytes_le(27, 3)) + 1};
    if (b.starts(12, "VP8L", 4)) {
        const uint64_t bits = b.from_bytes_le(21, 4);
        return {int64_t(bits & 0x3FFF) + 1, int64_t((bits >> 14) & 0x3FFF) + 1};
    }
    if (b.starts(12, "VP8 ", 4)) return {int64_t(b.uint(26, 2, false) & 0x3FFF), int64_t(b.uint(28, 2, false) & 0x3FFF)};
    throw ImageError("WebP without a known image chunk");
}

Size tiff_size(const Bytes& b) {
    const bool be = b.at(0) == 'M';
    const bool big = b.uint(2, 2, be) == 43;  // BigTIFF: 8-byte offsets and counts, 20-byte entries
    uint64_t count, first, size;
    if (big) {
        const uint64_t ifd = b.uint(8, 8, be);
        count = b.uint(ifd, 8, be), first = ifd + 8, size = 20;
    } else {
        const uint64_t ifd = b.uint(4, 4, be);
        count = b.uint(ifd, 2, be), first = ifd + 2, size = 12;
    }
    std::optional<HeaderInt> found[2];
    for (uint64_t n = 0; n < std::min<uint64_t>(count, 4096); ++n) {
        const uint64_t at = first + size * n;
        const uint64_t tag = b.uint(at, 2, be), typ = b.uint(at + 2, 2, be);
        if (tag == 256 || tag == 257) {  // ImageWidth, ImageLength (SHORT, LONG or LONG8)
            const size_t len = typ == 3 ? 2 : typ == 4 ? 4 : typ == 16 ? 8 : 0;
            if (!len) throw ImageError("TIFF with an unusual width/height type");
            const uint64_t v = b.uint(at + (big ? 12 : 8), len, be);
            found[tag - 256] = HeaderInt::from_unsigned(v);
        }
    }
    if (!found[0] || !found[1]) throw ImageError("TIFF without width/height tags");
    return {*found[0], *found[1]};
}

Size bmp_size(const Bytes& b) {
    if (b.uint(14, 4, false) == 12) return {int64_t(b.uint(18, 2, false)), int64_t(b.uint(20, 2, false))};  // OS/2 BITMAPCOREHEADER
    const auto w = static_cast<int32_t>(b.uint(18, 4, false)), h = static_cast<int32_t>(b.uint(22, 4, false));
    return {std::llabs(int64_t(w)), std::llabs(int64_t(h))};
}

// The logical screen, grown to hold the first frame (what a decoder allocates for it).
Size gif_size(const Bytes& b) {
    const int64_t w = int64_t(b.uint(6, 2, false)), h = int64_t(b.uint(8, 2, false));
    const uint64_t flags = b.uint(10, 1, false);
    size_t i = 13 + (flags & 0x80 ? size_t(3) << ((flags & 7) + 1) : 0);
    while (i < b.size()) {
        const uint8_t block = b.at(i);
        if (block == 0x2C) {  // image descriptor
            const int64_t left = int64_t(b.uint(i + 1, 2, false)), top = int64_t(b.uint(i + 3, 2, false));
            const int64_t fw = int64_t(b.uint(i + 5, 2, false)), fh = int64_t(b.uint(i + 7, 2, false));
            return {std::max(w, left + fw), std::max(h, top + fh)};
        }
        if (block != 0x21) break;
        i += 2;  // extension: label, then sub-blocks until a zero length
        while (b.at(i)) i += b.at(i) + 1;
        i += 1;
    }
    throw ImageError("GIF without an image");
}

// JP2 boxes: jp2h holds ihdr (height, width).
Size jp2_size(const Bytes& b) {
    size_t i = 0;
    while (i + 8 <= b.size()) {
        uint64_t length = b.uint(i, 4, true), header = 8;
        if (length == 1) length = b.uint(i + 8, 8, true), header = 16;
        if (b.starts(i + 4, "jp2h", 4)) {
            i += header;  // descend: ihdr is its first box
            continue;
        }
        if (b.starts(i + 4, "ihdr", 4)) return {int64_t(b.uint(i + 12, 4, true)), int64_t(b.uint(i + 8, 4, true))};
        if (length < header || length > b.size() - i) break;  // (a box past the end ends the loop, as in Python)
        i += length;
    }
    throw ImageError("JPEG 2000 without an image header");
}

// Raw codestream: the SIZ segment after SOC gives the reference grid and its offset.
Size j2k_size(const Bytes& b) {
    const int64_t xsiz = int64_t(b.uint(8, 4, true)), ysiz = int64_t(b.uint(12, 4, true));
    return {xsiz - int64_t(b.uint(16, 4, true)), ysiz - int64_t(b.uint(20, 4, true))};
}

// ISO BMFF: the largest 'ispe' (image spatial extents) in meta/iprp/ipco.
void avif_walk(const Bytes& b, size_t start, size_t end, int depth, std::vector<std::pair<int64_t, int64_t>>& sizes) {
    if (depth > kAvifMaxDepth) throw ImageError("AVIF with boxes nested too deep");
    size_t i = start;
    while (i + 8 <= end) {
        uint64_t length = b.uint(i, 4, true), header = 8;
        if (length == 1) length = b.uint(i + 8, 8, true), header = 16;
        else if (length == 0) length = end - i;
        if (length < header || length > end - i) throw ImageError("AVIF with a broken box");
        if (b.starts(i + 4, "meta", 4)) avif_walk(b, i + header + 4, i + length, depth + 1, sizes);  // a full box: version, flags
        else if (b.starts(i + 4, "iprp", 4) || b.starts(i + 4, "ipco", 4)) avif_walk(b, i + header, i + length, depth + 1, sizes);
        else if (b.starts(i + 4, "ispe", 4)) sizes.push_back({int64_t(b.uint(i + header + 4, 4, true)), int64_t(b.uint(i + header + 8, 4, true))});
        i += length;
    }
}

Size avif_size(const Bytes& b) {
    std::vector<std::pair<int64_t, int64_t>> sizes;
    avif_walk(b, 0, b.size(), 0, sizes);
    if (sizes.empty()) throw ImageError("AVIF without image extents");
    int64_t w = 0, h = 0;
    for (const auto& s : sizes) w = std::max(w, s.first), h = std::max(h, s.second);
    return {w, h};
}

// The first two integers of a PNM header, skipping whitespace and # comments.
Size pnm_tokens(const Bytes& b) {
    HeaderInt tokens[2];
    size_t i = 2;
    for (int n = 0; n < 2;) {
        while (i < b.size() && is_space(char(b.at(i)))) ++i;
        if (i < b.size() && b.at(i) == '#') {
            while (i < b.size() && b.at(i) != '\n' && b.at(i) != '\r') ++i;  // a comment to the end of the line or data
            continue;
        }
        size_t j = i;
        while (j < b.size() && b.at(j) >= '0' && b.at(j) <= '9') ++j;
        if (j == i || j - i > 10) throw Truncated{};
        tokens[n++] = py_int(b.slice(i, j));
        i = j;
    }
    return {tokens[0], tokens[1]};
}

Size pnm_size(const Bytes& b) {
    if (b.at(1) != '7') return pnm_tokens(b);
    // PAM: WIDTH and HEIGHT lines before ENDHDR (the last of each wins, as in a dict)
    std::string head = b.slice(0, 4096);
    head = head.substr(0, head.find("ENDHDR"));
    std::optional<std::string> width, height;
    size_t at = 0;
    bool first = true;
    while (at < head.size()) {  // bytes.splitlines(): \n, \r or \r\n
        size_t end = head.find_first_of("\r\n", at);
        const std::string line = head.substr(at, end == std::string::npos ? std::string::npos : end - at);
        at = end == std::string::npos ? head.size() : end + (head.compare(end, 2, "\r\n") == 0 ? 2 : 1);
        if (std::exchange(first, false)) continue;
        const auto parts = split_ws(line, 1);
        if (parts.size() != 2) continue;
        if (parts[0] == "WIDTH") width = parts[1];
        if (parts[0] == "HEIGHT") height = parts[1];
    }
    if (!width || !height) throw Truncated{};  // KeyError
    const HeaderInt w = py_int(*width);
    return {w, py_int(*height)};
}

Size pfm_size(const Bytes& b) {
    const std::string head = b.slice(3, 128);
    const auto parts = split_ws(head, 2);
    if (parts.size() < 2) throw Truncated{};
    // OpenCV reads one whitespace byte before each field; with more it fails an assertion and OpenCV 4.6 leaves its
    // temp file behind (runtime/images.py _pfm_size)
    const size_t h_at = parts[0].size() + 1;
    if (head.compare(0, parts[0].size(), parts[0]) != 0 || head.compare(h_at, parts[1].size(), parts[1]) != 0)
        throw ImageError("PFM header with more than one whitespace byte before a size field");
    const HeaderInt w = py_int(parts[0]);
    return {w, py_int(parts[1])};
}

Size sunraster_size(const Bytes& b) { return {int64_t(b.uint(4, 4, true)), int64_t(b.uint(8, 4, true))}; }

// Radiance: header lines, a blank line, then the resolution line such as '-Y 480 +X 640'.
Size hdr_size(const Bytes& b) {
    const std::string head = b.slice(0, 65536);
    const size_t blank = head.find("\n\n");
    if (blank == std::string::npos) throw Truncated{};
    const std::string rest = head.substr(blank + 2);
    const auto parts = split_ws(rest.substr(0, rest.find('\n')));
    auto axis = [](const std::string& p) { return p.size() == 2 ? p.substr(1) : std::string(); };
    if (parts.size() != 4 || (axis(parts[0]) != "X" && axis(parts[0]) != "Y") || (axis(parts[2]) != "X" && axis(parts[2]) != "Y"))
        throw Truncated{};
    const HeaderInt a = py_int(parts[1]), c = py_int(parts[3]);
    return axis(parts[0]) == "Y" ? Size{c, a} : Size{a, c};
}

std::string upper(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

std::string size_text(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }
std::string size_text(const Size& wh) { return wh.first.str() + "x" + wh.second.str(); }
}  // namespace

HeaderInt::HeaderInt(int64_t v) : negative_(v < 0) {
    digits_ = std::to_string(v);
    if (negative_) digits_.erase(0, 1);
}

HeaderInt HeaderInt::from_unsigned(uint64_t v) {
    HeaderInt out;
    out.digits_ = std::to_string(v);
    return out;
}

std::optional<HeaderInt> HeaderInt::parse(const std::string& text) {
    constexpr size_t kMaxDigits = 4300;  // sys.get_int_max_str_digits() by default
    size_t b = 0, e = text.size();
    while (b < e && is_space(text[b])) ++b;
    while (e > b && is_space(text[e - 1])) --e;
    HeaderInt out;
    if (b < e && (text[b] == '+' || text[b] == '-')) out.negative_ = text[b++] == '-';
    if (b == e || text[b] == '_' || text[e - 1] == '_') return std::nullopt;
    std::string digits;
    for (size_t i = b; i < e; ++i) {
        if (text[i] == '_') {
            if (text[i + 1] == '_') return std::nullopt;
            continue;
        }
        if (text[i] < '0' || text[i] > '9') return std::nullopt;
        digits += text[i];
    }
    if (digits.size() > kMaxDigits) return std::nullopt;  // leading zeros count, as in Python
    const size_t first = std::min(digits.find_first_not_of('0'), digits.size() - 1);
    out.digits_ = digits.substr(first);
    if (out.digits_ == "0") out.negative_ = false;
    return out;
}

bool HeaderInt::fits_int64() const {
    static const std::string max = std::to_string(INT64_MAX), min = max.substr(0, max.size() - 1) + "8";  // |INT64_MIN|
    const std::string& limit = negative_ ? min : max;
    return digits_.size() < limit.size() || (digits_.size() == limit.size() && digits_ <= limit);
}

int64_t HeaderInt::value() const {
    if (!fits_int64()) return negative_ ? INT64_MIN : INT64_MAX;
    const uint64_t magnitude = std::stoull(digits_);
    return negative_ ? int64_t(0 - magnitude) : int64_t(magnitude);
}

std::string HeaderInt::str() const { return (negative_ ? "-" : "") + digits_; }

std::string sniff_format(const uint8_t* data, size_t size) { return sniff(Bytes(data, std::min<size_t>(size, 32))); }

std::optional<HeaderSize> header_size(const uint8_t* data, size_t size) {
    const Bytes b(data, size);
    const std::string fmt = sniff_format(data, size);
    if (fmt.empty()) return std::nullopt;
    static const std::map<std::string, Size (*)(const Bytes&)> readers = {
        {"png", png_size}, {"jpeg", jpeg_size}, {"webp", webp_size}, {"tiff", tiff_size}, {"bmp", bmp_size},
        {"gif", gif_size}, {"jp2", jp2_size}, {"j2k", j2k_size}, {"avif", avif_size}, {"pnm", pnm_size},
        {"pfm", pfm_size}, {"sunraster", sunraster_size}, {"hdr", hdr_size}};
    Size wh;
    try {
        wh = readers.at(fmt)(b);
    } catch (const Truncated&) {
        throw ImageError("truncated or corrupt " + upper(fmt) + " header");
    }
    if (!wh.first.positive() || !wh.second.positive()) throw ImageError(upper(fmt) + " header gives an empty size " + size_text(wh));
    return wh;
}

namespace {
std::atomic<bool> g_quiet_codecs{false};

// File descriptor 2 pointed at /dev/null while a C codec runs (when set_quiet_codecs(true) asked for it):
// libpng and libjpeg print their own warnings there, and a damaged photo must stay one line.
class QuietCodecs {
public:
    QuietCodecs() {
        if (!g_quiet_codecs.load()) return;
        std::fflush(stderr);
        saved_ = ::dup(2);
        const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (saved_ >= 0 && null >= 0) ::dup2(null, 2);
        if (null >= 0) ::close(null);
    }
    ~QuietCodecs() {
        if (saved_ < 0) return;
        ::dup2(saved_, 2);
        ::close(saved_);
    }
    QuietCodecs(const QuietCodecs&) = delete;
    QuietCodecs& operator=(const QuietCodecs&) = delete;

private:
    int saved_ = -1;
};
}  // namespace

void set_quiet_codecs(bool quiet) { g_quiet_codecs.store(quiet); }

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
    float* src = f.ptr<float>();
    float hi = 0.0f;  // max(initial=0), after NaN and Inf became 0 (a damaged PFM or HDR file)
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(src[i])) src[i] = 0.0f;
        hi = std::max(hi, src[i]);
    }
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

namespace {
// A PNG chunk whose declared length runs past the end of the data is refused: OpenCV's PNG reader
// allocates what a chunk declares before reading it (runtime/images.py check_png_chunks).
void check_png_chunks(const uint8_t* data, size_t size) {
    const Bytes b(data, size);
    size_t i = 8;
    while (i + 8 <= size) {
        const uint64_t length = b.uint(i, 4, true);
        if (length + 12 > size - i)
            throw ImageError("PNG chunk of " + std::to_string(length) + " bytes at byte " + std::to_string(i) +
                             " runs past the end of the data (truncated or corrupt file)");
        if (std::memcmp(data + i + 4, "IEND", 4) == 0) return;
        i += 12 + length;
    }
}
}  // namespace

cv::Mat decode_image(const uint8_t* data, size_t size, int64_t max_pixels) {
    if (size == 0) throw ImageError("empty file");
    const auto hs = header_size(data, size);
    if (!hs) throw ImageError("not a readable image (unknown format or corrupt data)");  // no size before decoding: refused
    const bool fit = hs->first.fits_int64() && hs->second.fits_int64();  // both >= 1: one beyond int64 is over any cap
    if (!fit || hs->first.value() > max_pixels / hs->second.value())  // w * h > cap, without overflow
        throw ImageError(size_text(*hs) + " pixels is over the cap of " + std::to_string(max_pixels) +
                         " (decompression bomb?)");
    if (size > size_t(INT32_MAX)) throw ImageError("the file is over 2 GB");
    if (sniff_format(data, size) == "png") check_png_chunks(data, size);
    // a decoding failure is one ImageError line; OpenCV's own log would add more (as runtime/images.py)
    static const bool silenced = (cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT), true);
    (void)silenced;
    cv::Mat img;
    {
        const QuietCodecs quiet;
        try {  // IMREAD_COLOR applies EXIF orientation (IMREAD_UNCHANGED would not); ANYDEPTH keeps 16 bits
            img = codecs_decode(cv::Mat(1, static_cast<int>(size), CV_8U, const_cast<uint8_t*>(data)), cv::IMREAD_COLOR | cv::IMREAD_ANYDEPTH);
        } catch (const cv::Exception&) {
            img.release();
        }
    }
    if (img.empty()) throw ImageError("not a readable image (unknown format or corrupt data)");
    if (int64_t(img.rows) * img.cols > max_pixels)
        throw ImageError(size_text(img.cols, img.rows) + " pixels is over the cap of " + std::to_string(max_pixels));
    cv::Mat rgb;
    cv::cvtColor(to_8bit(img), rgb, cv::COLOR_BGR2RGB);  // IMREAD_COLOR gives 3 channels, BGR
    return rgb;
}

int64_t max_file_bytes(int64_t max_pixels) { return 8 * max_pixels + (1 << 20); }

cv::Mat read_image(const fs::path& path, int64_t max_pixels) {
    const auto fail = [&](int err) { return ImageError(path.string() + (err == EISDIR ? ": is a directory" : ": cannot read (" + std::string(std::strerror(err)) + ")")); };
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw fail(errno);
    if (st.st_size > max_file_bytes(max_pixels)) {
        char mb[32];
        std::snprintf(mb, sizeof(mb), "%.0f", double(st.st_size) / 1e6);
        throw ImageError(path.string() + ": " + mb + " MB is larger than any image under the cap of " + std::to_string(max_pixels) +
                         " pixels could be");
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw fail(errno);
    std::vector<uint8_t> data;
    uint8_t buf[1 << 16];
    while (true) {
        const ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            throw fail(err);
        }
        if (n == 0) break;
        data.insert(data.end(), buf, buf + n);
        if (int64_t(data.size()) > max_file_bytes(max_pixels)) break;  // grew while being read: the cap still holds
    }
    ::close(fd);
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
    static const char* suffixes[] = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jp2", ".j2k", ".avif",
                                     ".pbm", ".pgm", ".ppm", ".pnm", ".pam", ".pfm", ".ras", ".sr", ".hdr", ".pic"};
    std::vector<fs::path> out;
    for (const auto& entry : fs::directory_iterator(folder)) {
        if (!entry.is_regular_file()) continue;
        std::string ext = entry.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
        bool listed = std::find_if(std::begin(suffixes), std::end(suffixes), [&](const char* s) { return ext == s; }) != std::end(suffixes);
        if (!listed) {  // no image suffix: an image all the same when its first bytes say so
            uint8_t head[32];
            std::ifstream f(entry.path(), std::ios::binary);
            f.read(reinterpret_cast<char*>(head), sizeof(head));
            listed = f.gcount() > 0 && !sniff_format(head, static_cast<size_t>(f.gcount())).empty();
        }
        if (listed) out.push_back(entry.path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace jzi
