// OpenCV's image codecs opened at first use (see jzi/codecs.h).
#include "jzi/codecs.h"

#include <opencv2/imgcodecs.hpp>

#include "jzi/error.h"

#ifdef JZI_IMGCODECS_SONAME
#include <dlfcn.h>

#include <type_traits>
#include <vector>
#endif

namespace jzi {

#ifdef JZI_IMGCODECS_SONAME
namespace {
using Decode = cv::Mat (*)(cv::InputArray, int);
using Write = bool (*)(const cv::String&, cv::InputArray, const std::vector<int>&);
// The two symbols by their (Itanium C++ ABI) names; the signatures are those of the header compiled
// against, so the names below are theirs (checked here without referring to the symbols).
static_assert(std::is_same_v<decltype(static_cast<Decode>(&cv::imdecode)), Decode>);
static_assert(std::is_same_v<decltype(static_cast<Write>(&cv::imwrite)), Write>);
constexpr const char* kDecode = "_ZN2cv8imdecodeERKNS_11_InputArrayEi";
constexpr const char* kWrite = "_ZN2cv7imwriteERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKNS_11_InputArrayERKSt6vectorIiSaIiEE";

struct Codecs {
    Decode decode = nullptr;
    Write write = nullptr;
    std::string error;
};

const Codecs& codecs() {
    static const Codecs c = [] {  // thread-safe, once
        Codecs c;
        void* lib = ::dlopen(JZI_IMGCODECS_SONAME, RTLD_NOW | RTLD_LOCAL);
        if (lib) {
            c.decode = reinterpret_cast<Decode>(::dlsym(lib, kDecode));
            c.write = reinterpret_cast<Write>(::dlsym(lib, kWrite));
        }
        if (!c.decode || !c.write) {
            const char* why = ::dlerror();
            c.error = std::string("cannot open OpenCV's image codecs (" JZI_IMGCODECS_SONAME "): ") + (why ? why : "symbols missing");
        }
        return c;
    }();
    if (!c.error.empty()) throw Error(ErrorKind::Internal, c.error);
    return c;
}
}  // namespace

cv::Mat codecs_decode(const cv::Mat& buf, int flags) { return codecs().decode(buf, flags); }
bool codecs_write(const std::string& path, const cv::Mat& img) { return codecs().write(path, img, {}); }
#else
cv::Mat codecs_decode(const cv::Mat& buf, int flags) { return cv::imdecode(buf, flags); }
bool codecs_write(const std::string& path, const cv::Mat& img) { return cv::imwrite(path, img); }
#endif

}  // namespace jzi
