// Errors: one exception type carrying a kind, each message one line saying why (as the Python runtime's).
#pragma once

#include <stdexcept>
#include <string>

namespace jzi {

// The kinds mirror the Python runtime's error types; the C API returns them as status codes.
enum class ErrorKind {
    Bundle = 1,     // jzi.runtime.bundle.BundleError
    TileStore = 2,  // jzi.runtime.tiles.TileStoreError
    Image = 3,      // jzi.runtime.images.ImageError
    Localizer = 4,  // jzi.runtime.localizer.LocalizerError
    Backend = 5,    // jzi.runtime.backends.BackendUnavailable
    Argument = 6,   // ValueError: a bad argument from the caller
    Io = 7,         // OSError: a file that cannot be read or written
    Internal = 8,   // anything else (a bug)
};

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

inline Error BundleError(const std::string& m) { return Error(ErrorKind::Bundle, m); }
inline Error TileStoreError(const std::string& m) { return Error(ErrorKind::TileStore, m); }
inline Error ImageError(const std::string& m) { return Error(ErrorKind::Image, m); }
inline Error LocalizerError(const std::string& m) { return Error(ErrorKind::Localizer, m); }
inline Error BackendUnavailable(const std::string& m) { return Error(ErrorKind::Backend, m); }
inline Error ArgumentError(const std::string& m) { return Error(ErrorKind::Argument, m); }

}  // namespace jzi
