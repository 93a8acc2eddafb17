// Image decoding and preprocessing: files in, uint8 RGB at the bundle's sizes out (runtime/images.py).
//
// - Formats: those whose size is read from the header here (JPEG, PNG, WebP, TIFF/BigTIFF, BMP, GIF,
//   JPEG 2000, AVIF, PNM/PAM, PFM, Sun raster, Radiance HDR) and that this OpenCV decodes; anything
//   else is refused before decoding. EXIF orientation honoured.
// - Grey, RGBA (alpha dropped), 16-bit and float images become 8-bit RGB.
// - Decompression bombs: the pixel count is read from the file header before decoding and checked
//   against a cap (then again after decoding); files larger than any image under the cap could be are
//   refused before they are read.
// - Folders: files are picked by suffix or by content.
// - A street photo is stretched to S x 2S with INTER_LINEAR_EXACT, as the Python runtime does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

namespace jzi {

constexpr int64_t kMaxPixels = 100000000;  // 100 MP: far above any camera, far below exhausting memory

// A width or height exactly as a header states it. Text headers (PAM, PFM, Radiance) may state decimal
// numbers of any length and BigTIFF unsigned 64-bit ones; Python's int keeps every one of them, so a
// refusal names the number as written: here a sign and decimal digits.
class HeaderInt {
public:
    HeaderInt(int64_t v = 0);  // NOLINT: every binary header field converts implicitly
    static HeaderInt from_unsigned(uint64_t v);
    // Python's int(text): whitespace around, a sign, digits with single underscores between them, at most
    // 4 300 digits (Python's default int_max_str_digits); nullopt where Python raises ValueError.
    static std::optional<HeaderInt> parse(const std::string& text);

    bool positive() const { return !negative_ && digits_ != "0"; }
    bool fits_int64() const;
    int64_t value() const;    // saturated at INT64_MIN / INT64_MAX where it does not fit
    std::string str() const;  // as Python's str(int)

private:
    bool negative_ = false;
    std::string digits_ = "0";  // no leading zeros
};
using HeaderSize = std::pair<HeaderInt, HeaderInt>;  // (width, height)

// The image format named by the first bytes (32 are enough): "png", "jpeg", ... or "" (sniff_format).
std::string sniff_format(const uint8_t* data, size_t size);
// (width, height) from the header of any format sniff_format knows, nullopt for other bytes; a header
// that is truncated or inconsistent is an Error(Image) ("truncated or corrupt PNG header", ...).
std::optional<HeaderSize> header_size(const uint8_t* data, size_t size);

// Silence file descriptor 2 around each decode (libpng/libjpeg print there themselves); process-wide,
// so CLIs turn it on and libraries embedding the runtime leave it off (QUIET_CODECS in runtime/images.py).
void set_quiet_codecs(bool quiet);

// Encoded bytes -> uint8 RGB [H, W, 3] (CV_8UC3), EXIF-rotated; Error(Image) on anything unusable.
cv::Mat decode_image(const uint8_t* data, size_t size, int64_t max_pixels = kMaxPixels);
// A file -> uint8 RGB; every problem is one Error(Image) line naming the file.
cv::Mat read_image(const std::filesystem::path& path, int64_t max_pixels = kMaxPixels);
// An RGB(A) or grey array of any OpenCV depth -> uint8 RGB (as to_rgb8 with already_rgb=True).
cv::Mat to_rgb8(const cv::Mat& img);

// The photo stretched to image_size x 2*image_size into `out` (uint8 [S, 2S, 3], contiguous).
void street_input(const cv::Mat& rgb, int image_size, uint8_t* out);

// Image files directly inside `folder`, by suffix or by content, sorted by name.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& folder);

}  // namespace jzi
