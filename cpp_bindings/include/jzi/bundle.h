// The model bundle: the contract between jzi-export (writer) and every runtime (reader).
//
// A bundle is a directory (see runtime/bundle.py for the full contract):
//
//     manifest.json            everything a runtime needs
//     view_encoder.onnx        uint8 RGB [B, S, S, 3] -> float32 [B, D]
//     street_encoder.onnx      uint8 RGB [B, S, 2S, 3] -> float32 [B, D]
//     decoder.onnx             one zoom step with a fixed-size KV cache
//     *.engine                 optional TensorRT engines built on the target device
//
// The manifest is untrusted input: load_manifest validates every field against one schema (messages
// name the field, as runtime/bundle.py's), checks that the fields agree with each other and with the
// graph contract, and checks the files' sha256 (OpenSSL).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "jzi/error.h"
#include "jzi/geometry.h"
#include "jzi/schema.h"

namespace jzi {

namespace fs = std::filesystem;

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;  // -1 for a named (dynamic) axis
    std::string dtype;
};

struct GraphSpec {
    std::vector<TensorSpec> inputs, outputs;
};

struct FileEntry {
    fs::path path;  // absolute: inside the bundle
    std::string sha256;
};

struct Manifest {
    fs::path root;
    Json doc;  // the whole manifest (validated), for callers that want more
    Region region;
    int grid = 0, steps = 0, n_actions = 0, width = 0, image_size = 0;
    int layers = 0, heads = 0, head_dim = 0, cache_len = 0;
    std::string precision, encoder_id;
    std::map<std::string, FileEntry> files;
    std::map<std::string, GraphSpec> tensors;

    bool has_file(const std::string& role) const { return files.count(role) > 0; }
    const fs::path& file(const std::string& role) const { return files.at(role).path; }
};

extern const char* const kGraphs[3];  // view_encoder, street_encoder, decoder

// Read and validate manifest.json; with `verify` also check every file's sha256. Throws Error(Bundle).
Manifest load_manifest(const fs::path& bundle_dir, bool verify = true);

// Hex sha256 of a file or of bytes (OpenSSL's EVP interface).
std::string sha256_file(const fs::path& path);
std::string sha256_bytes(const void* data, size_t size);

std::vector<std::string> past_names(int layers);
std::vector<std::string> present_names(int layers);

// The Region of a validated region dict (a manifest's or a tile-store index's). Throws json errors on a
// dict that was not validated against schema::region().
Region region_from_json(const Json& doc);

}  // namespace jzi
