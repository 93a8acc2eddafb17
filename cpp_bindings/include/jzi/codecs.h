// OpenCV's image codecs (imdecode, imwrite), opened when first used.
//
// Debian's libopencv_imgcodecs pulls in some 117 more shared libraries (GDAL, GDCM, OpenEXR, ...). Linked
// the usual way, the dynamic loader spends about half of jzi-run-native's start-up on them before main()
// runs (60 of 140 ms with the tiny bundle), and they hold 40 MB of memory; opened with dlopen at the first
// decode (-DJZI_LAZY_IMGCODECS=ON), runs that decode nothing never load them. jzi-run-native's first answer
// comes no earlier that way: while one thread is inside that dlopen, glibc holds back every other thread
// that starts a thread or registers a thread_local destructor (ONNX Runtime's environment does both), and
// the two cores share the rest (benchmarks/RESULTS.md, issue 10, fifth session). Where CMake could not read
// the library's soname the codecs are linked as usual.
#pragma once

#include <string>

#include <opencv2/core.hpp>

namespace jzi {

// cv::imdecode(buf, flags); an empty Mat where OpenCV cannot decode. Error(Internal) if the codecs
// library cannot be opened.
cv::Mat codecs_decode(const cv::Mat& buf, int flags);
// cv::imwrite(path, img); false where OpenCV cannot write that file.
bool codecs_write(const std::string& path, const cv::Mat& img);

}  // namespace jzi
