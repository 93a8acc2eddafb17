// jzi's JSON documents checked field by field, with runtime/schema.py's messages.
#include "jzi/schema.h"

#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace jzi {
namespace schema {
namespace {

// An integer JSON value in lo..hi (nlohmann keeps non-negative integers unsigned, negative ones signed).
bool int_in(const Json& v, int64_t lo, int64_t hi) {
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        return hi >= 0 && u <= uint64_t(hi) && (lo <= 0 || u >= uint64_t(lo));
    }
    return v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
}

std::string join(const std::string& where, const std::string& key) { return where.empty() ? key : where + "." + key; }

// Python's repr of a float: the shortest digits that read back, fixed notation for exponents -4..15.
std::string float_repr(double x) {
    if (std::isnan(x)) return "nan";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
    const std::string sci(buf, res.ptr);  // "-1.2345e+07"
    const auto e = sci.find('e');
    const int exp = std::stoi(sci.substr(e + 1));
    const bool neg = sci[0] == '-';
    std::string digits;
    for (size_t i = neg ? 1 : 0; i < e; ++i)
        if (sci[i] != '.') digits += sci[i];
    std::string out = neg ? "-" : "";
    if (exp < -4 || exp >= 16) {
        out += digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
        char ex[16];
        std::snprintf(ex, sizeof(ex), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
        return out + ex;
    }
    if (exp < 0) return out + "0." + std::string(size_t(-exp - 1), '0') + digits;
    if (digits.size() <= size_t(exp) + 1) return out + digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    return out + digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
}

// Python's repr of a str: single quotes unless it holds one and no double quote; control characters escaped.
std::string str_repr(const std::string& s) {
    const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, q);
    for (unsigned char c : s) {
        if (c == '\\' || c == static_cast<unsigned char>(q)) out += '\\', out += static_cast<char>(c);
        else if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (c == '\t') out += "\\t";
        else if (c < 0x20 || c == 0x7f) {
            char hex[8];
            std::snprintf(hex, sizeof(hex), "\\x%02x", c);
            out += hex;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + q;
}

// "%g" as Python's format(x, "g") writes it (both follow C's rules).
std::string g(double x) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%g", x);
    return buf;
}

}  // namespace

std::string py_repr(const Json& v) {
    if (v.is_string()) return str_repr(v.get<std::string>());
    if (v.is_null()) return "None";
    if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
    if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
    if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
    if (v.is_number_float()) return float_repr(v.get<double>());
    if (v.is_array()) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
        return out + "]";
    }
    std::string out = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it, first = false) out += (first ? "" : ", ") + str_repr(it.key()) + ": " + py_repr(it.value());
    return out + "}";
}

std::string show(const Json& v) {
    const std::string text = py_repr(v);
    // Python counts characters, not bytes: cut after the 57th character when there are more than 60
    size_t chars = 0, cut = std::string::npos;
    for (size_t i = 0; i < text.size(); ++i) {
        if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;  // a UTF-8 continuation byte
        if (chars == 57) cut = i;
        ++chars;
    }
    return chars <= 60 ? text : text.substr(0, cut) + "...";
}

Validator integer(int64_t lo, int64_t hi) {
    return [lo, hi](const Json& v, const std::string& where) {
        if (!int_in(v, lo, hi)) throw SchemaError(where + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " + show(v));
    };
}

Validator number(double lo, double hi, bool exclusive_lo) {
    return [=](const Json& v, const std::string& where) {
        const bool ok = v.is_number() && std::isfinite(v.get<double>()) && (exclusive_lo ? v.get<double>() > lo : v.get<double>() >= lo) &&
                        v.get<double>() <= hi;
        if (!ok)
            throw SchemaError(where + " must be a finite number in " + (exclusive_lo ? "(" : "[") + g(lo) + ", " + g(hi) + "], got " + show(v));
    };
}

Validator string(std::vector<std::string> choices, int hex_len) {
    return [choices = std::move(choices), hex_len](const Json& v, const std::string& where) {
        if (!v.is_string() || v.get<std::string>().empty()) throw SchemaError(where + " must be a non-empty string, got " + show(v));
        const std::string s = v.get<std::string>();
        if (!choices.empty()) {
            bool found = false;
            for (const auto& c : choices) found = found || c == s;
            if (!found) throw SchemaError(where + " must be one of " + py_repr(Json(choices)) + ", got " + show(v));
        }
        if (hex_len > 0 && (s.size() != size_t(hex_len) || s.find_first_not_of("0123456789abcdef") != std::string::npos))
            throw SchemaError(where + " must be " + std::to_string(hex_len) + " lowercase hex digits, got " + show(v));
    };
}

Validator any_value() {
    return [](const Json&, const std::string&) {};
}

Validator list_of(Validator item, int64_t length, int64_t max_len) {
    return [item = std::move(item), length, max_len](const Json& v, const std::string& where) {
        if (!v.is_array()) throw SchemaError(where + " must be a list, got " + show(v));
        const int64_t n = static_cast<int64_t>(v.size());
        if (length >= 0 && n != length)
            throw SchemaError(where + " must hold " + std::to_string(length) + " items, got " + std::to_string(n));
        if (n > max_len) throw SchemaError(where + " holds " + std::to_string(n) + " items, more than " + std::to_string(max_len));
        for (int64_t i = 0; i < n; ++i) item(v[size_t(i)], where + "[" + std::to_string(i) + "]");
    };
}

Validator one_of(std::vector<Validator> validators) {
    return [validators = std::move(validators)](const Json& v, const std::string& where) {
        std::string first;
        for (const auto& val : validators) {
            try {
                return val(v, where);
            } catch (const SchemaError& e) {
                if (first.empty()) first = e.what();
            }
        }
        throw SchemaError(first);
    };
}

Validator mapping(Validator value) {
    return [value = std::move(value)](const Json& v, const std::string& where) {
        if (!v.is_object()) throw SchemaError(where + " must be an object, got " + show(v));
        for (auto it = v.begin(); it != v.end(); ++it) value(it.value(), where + "." + it.key());
    };
}

Validator obj(Fields required, Fields optional) {
    return [required = std::move(required), optional = std::move(optional)](const Json& v, const std::string& where) {
        if (!v.is_object()) throw SchemaError(where + " must be an object, got " + show(v));
        for (const auto& [key, val] : required) {
            if (!v.contains(key)) throw SchemaError(join(where, key) + " is missing");
            val(v[key], join(where, key));
        }
        for (const auto& [key, val] : optional)
            if (v.contains(key)) val(v[key], join(where, key));
    };
}

const Validator& region() {
    static const Validator r = obj({{"center_lat", number(-90, 90)},
                                    {"center_lon", number(-180, 180)},
                                    {"size_m", number(0, 40075017, true)},  // more than 0, at most the equator
                                    {"grid", integer(2, 16)},
                                    {"steps", integer(1, 12)},
                                    {"view_px", integer(1, 1 << 14)}});
    return r;
}

Json read_json_document(const std::filesystem::path& path, const std::string& format, const std::map<int, Validator>& schemas,
                        const std::string& what, ErrorKind kind, const std::string& too_old) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(ErrorKind::Io, path.string() + ": cannot read");
    std::stringstream text;
    text << f.rdbuf();
    Json doc;
    try {
        doc = Json::parse(text.str());
    } catch (const Json::exception& e) {
        std::string why = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 3: ..."
        const auto at = why.find(" at line ");
        why = why.substr(at == std::string::npos ? 0 : at + 4);
        throw Error(kind, path.string() + ": not valid JSON (" + why.substr(0, std::min<size_t>(120, why.find("; last read"))) + ")");
    }
    if (!doc.is_object() || !doc.contains("format") || doc["format"] != format) throw Error(kind, path.string() + ": not a " + what);
    const Json version = doc.contains("format_version") ? doc["format_version"] : Json();
    const bool known = int_in(version, INT32_MIN, INT32_MAX) && schemas.count(static_cast<int>(version.get<int64_t>())) > 0;
    if (!known) {
        std::string readable;
        for (const auto& [v, _] : schemas) readable += (readable.empty() ? "" : ", ") + std::to_string(v);
        const bool old = int_in(version, INT64_MIN, schemas.begin()->first - 1);
        throw Error(kind, path.string() + ": format_version " + show(version) + ", this jzi reads " + readable + (old ? too_old : ""));
    }
    try {
        schemas.at(static_cast<int>(version.get<int64_t>()))(doc, "");
    } catch (const SchemaError& e) {
        throw Error(kind, path.string() + ": " + e.what());
    }
    return doc;
}

}  // namespace schema
}  // namespace jzi
