// One reader for jzi's untrusted JSON documents: the bundle manifest and the tile-store index
// (runtime/schema.py, message for message).
//
// A schema is built from small validators (integer, number, string, obj, ...); each checks one value
// and names it by its dotted path in the document when it is wrong:
//
//     decoder.layers must be an integer in 1..256, got 'x'
//
// read_json_document parses a file, checks its format and version, and applies a schema; every problem
// becomes one line of the caller's error kind, prefixed with the file's path. Values are shown as
// Python's repr shows them, so that both runtimes refuse a document with the same line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "jzi/error.h"

namespace jzi {

// Keys keep the document's order: a mapping's entries are checked (and reported) in the order written.
using Json = nlohmann::ordered_json;

namespace schema {

// A field that does not fit its schema; the message names the field.
class SchemaError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

using Validator = std::function<void(const Json& value, const std::string& where)>;
using Fields = std::vector<std::pair<std::string, Validator>>;  // in the order they are checked

Validator integer(int64_t lo, int64_t hi);
Validator number(double lo, double hi, bool exclusive_lo = false);  // finite, in [lo, hi] or (lo, hi]
Validator string(std::vector<std::string> choices = {}, int hex_len = 0);
Validator any_value();
Validator list_of(Validator item, int64_t length = -1, int64_t max_len = int64_t(1) << 24);
Validator one_of(std::vector<Validator> validators);  // the first one's message when none accepts
Validator mapping(Validator value);                   // any keys, every value checked
Validator obj(Fields required, Fields optional = {});  // these fields; unknown ones allowed

// The region dict of manifests and tile-store indexes.
const Validator& region();

// The value as Python's repr prints it, cut to 60 characters ('x', [1, 2], True, None, 1e+20).
std::string show(const Json& value);
// Python's repr, uncut.
std::string py_repr(const Json& value);

// An untrusted jzi JSON file: valid JSON, its `format`, a `format_version` that `schemas` has a schema
// for, and that schema; any problem is one Error(kind) line starting with the file's path. `too_old`
// is appended when the version is older than every readable one (how to upgrade).
Json read_json_document(const std::filesystem::path& path, const std::string& format, const std::map<int, Validator>& schemas,
                        const std::string& what, ErrorKind kind, const std::string& too_old = "");

}  // namespace schema
}  // namespace jzi
