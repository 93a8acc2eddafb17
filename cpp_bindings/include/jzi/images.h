// Image decoding and preprocessing: files in, uint8 RGB at the bundle's sizes out (runtime/images.py).
//
// - Formats: whatever OpenCV decodes (JPEG, PNG, WebP, TIFF, BMP, ...); EXIF orientation honoured.
// - Grey, RGBA (alpha dropped) and 16-bit images become 8-bit RGB.
// - Decompression bombs: the pixel count is read from the file header before decoding and checked
//   against a cap, then checked again after decoding (for formats whose header is not parsed here).
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

// (width, height) from a PNG/JPEG/WebP/TIFF/BMP header, or nullopt when the format is not parsed here.
std::optional<std::pair<int64_t, int64_t>> header_size(const uint8_t* data, size_t size);

// Encoded bytes -> uint8 RGB [H, W, 3] (CV_8UC3), EXIF-rotated; Error(Image) on anything unusable.
cv::Mat decode_image(const uint8_t* data, size_t size, int64_t max_pixels = kMaxPixels);
// A file -> uint8 RGB; every problem is one Error(Image) line naming the file.
cv::Mat read_image(const std::filesystem::path& path, int64_t max_pixels = kMaxPixels);
// An RGB(A) or grey array of any OpenCV depth -> uint8 RGB (as to_rgb8 with already_rgb=True).
cv::Mat to_rgb8(const cv::Mat& img);

// The photo stretched to image_size x 2*image_size into `out` (uint8 [S, 2S, 3], contiguous).
void street_input(const cv::Mat& rgb, int image_size, uint8_t* out);

// Image files directly inside `folder`, sorted by name (the suffixes jzi-run accepts).
std::vector<std::filesystem::path> list_images(const std::filesystem::path& folder);

}  // namespace jzi
