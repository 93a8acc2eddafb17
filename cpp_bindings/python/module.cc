// jzi.native._native: a thin pybind11 layer over the C++ runtime. jzi/native/__init__.py turns its
// plain dicts into jzi.runtime.localizer's Localization objects; errors arrive as the Python runtime's
// own exception types (BundleError, TileStoreError, ImageError, LocalizerError, BackendUnavailable).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>

#include "jzi/backend.h"
#include "jzi/localizer.h"
#include "jzi/onnxrt.h"
#include "jzi/tensorrt.h"

namespace py = pybind11;
using namespace jzi;

namespace {

py::dict timings_dict(const Timings& t, bool with_query) {
    py::dict d;
    if (with_query) {
        d["read_ms"] = t.read_ms;
        d["preprocess_ms"] = t.preprocess_ms;
        d["encoder_ms"] = t.encoder_ms;
        d["batch"] = t.batch;
        d["total_ms"] = t.total_ms;
    }
    d["tiles_ms"] = t.tiles_ms;
    d["decoder_steps_ms"] = t.decoder_steps_ms;
    d["decoder_ms"] = t.decoder_ms;
    d["zoom_ms"] = t.zoom_ms;
    return d;
}

py::dict result_dict(const Localization& r, bool with_query) {
    py::dict d;
    d["latitude"] = r.latitude;
    d["longitude"] = r.longitude;
    d["path"] = r.path;
    d["step_probs"] = r.step_probs;
    d["confidence"] = r.confidence;
    py::list cands;
    for (const auto& c : r.candidates) {
        py::dict cd;
        cd["latitude"] = c.latitude;
        cd["longitude"] = c.longitude;
        cd["path"] = c.path;
        cd["score"] = c.score;
        cd["probability"] = c.probability;
        cands.append(cd);
    }
    d["candidates"] = cands;
    d["timings"] = timings_dict(r.timings, with_query);
    return d;
}

py::list results_list(const std::vector<Localization>& rs, bool with_query) {
    py::list out;
    for (const auto& r : rs) out.append(result_dict(r, with_query));
    return out;
}

// A numpy image [H, W] or [H, W, C] of any dtype -> a cv::Mat copy (then to_rgb8, as load_rgb does).
cv::Mat array_to_mat(const py::array& in) {
    py::array arr = in;
    const auto dt = arr.dtype();
    int depth;
    if (dt.is(py::dtype::of<uint8_t>())) depth = CV_8U;
    else if (dt.is(py::dtype::of<uint16_t>())) depth = CV_16U;
    else if (dt.is(py::dtype::of<float>())) depth = CV_32F;
    else {
        arr = py::array_t<double, py::array::c_style | py::array::forcecast>(in);
        depth = CV_64F;
    }
    arr = py::array::ensure(arr, py::array::c_style);
    std::string shape = "(";
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) shape += std::to_string(arr.shape(i)) + (arr.ndim() == 1 || i + 1 < arr.ndim() ? ", " : "");
    shape += ")";
    const bool ok = (arr.ndim() == 2 || (arr.ndim() == 3 && (arr.shape(2) == 1 || arr.shape(2) == 3 || arr.shape(2) == 4))) && arr.size() > 0;
    if (!ok) throw ImageError("an image array must be [H, W], [H, W, 3] or [H, W, 4], got " + shape);
    const int channels = arr.ndim() == 3 ? static_cast<int>(arr.shape(2)) : 1;
    cv::Mat view(static_cast<int>(arr.shape(0)), static_cast<int>(arr.shape(1)), CV_MAKETYPE(depth, channels),
                 const_cast<void*>(arr.data()));
    return to_rgb8(view).clone();
}

py::array_t<uint8_t> mat_to_array(const cv::Mat& m) {
    py::array_t<uint8_t> out({m.rows, m.cols, 3});
    const cv::Mat c = m.isContinuous() ? m : m.clone();
    std::memcpy(out.mutable_data(), c.data, c.total() * 3);
    return out;
}

cv::Mat any_image(const py::handle& image, int64_t max_pixels) {
    if (py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__")) {
        const std::string path = py::str(py::module_::import("os").attr("fspath")(image));
        py::gil_scoped_release nogil;
        return read_image(path, max_pixels);
    }
    if (py::isinstance<py::bytes>(image) || py::isinstance<py::bytearray>(image) || py::isinstance<py::memoryview>(image)) {
        const std::string data = py::bytes(py::module_::import("builtins").attr("bytes")(image));
        py::gil_scoped_release nogil;
        return decode_image(reinterpret_cast<const uint8_t*>(data.data()), data.size(), max_pixels);
    }
    return array_to_mat(py::array::ensure(image));
}

class PyLocalizer {
public:
    PyLocalizer(const std::string& bundle, const std::string& tiles, const std::string& backend, int threads, bool verify) {
        LocalizerOptions o;
        o.backend = backend;
        o.threads = threads;
        o.verify_bundle = verify;
        py::gil_scoped_release nogil;
        impl_ = std::make_unique<Localizer>(bundle, tiles, o);
    }

    py::list localize_batch(const py::iterable& images, int beams, int64_t max_pixels) {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<cv::Mat> rgbs;
        for (const auto& img : images) rgbs.push_back(any_image(img, max_pixels));
        const double read = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (rgbs.empty()) return py::list();
        std::vector<Localization> rs;
        {
            py::gil_scoped_release nogil;
            rs = impl_->localize_batch(rgbs, beams);
        }
        for (auto& r : rs) {  // decoding happened here, before the batch: count it as the Python side does
            r.timings.read_ms += read;
            r.timings.total_ms += read;
        }
        return results_list(rs, true);
    }

    py::list zoom(const py::array_t<float, py::array::c_style | py::array::forcecast>& query, int beams) {
        if (query.ndim() != 2 || query.shape(1) != impl_->manifest().width)
            throw LocalizerError("query must be [B, " + std::to_string(impl_->manifest().width) + "] street embeddings");
        std::vector<Localization> rs;
        {
            py::gil_scoped_release nogil;
            rs = impl_->zoom(query.data(), static_cast<int>(query.shape(0)), beams);
        }
        return results_list(rs, false);
    }

    Localizer& impl() { return *impl_; }

private:
    std::unique_ptr<Localizer> impl_;
};

class PyTileStore {
public:
    explicit PyTileStore(const fs::path& path) : store_(path) {}
    py::array_t<float> read_row(int64_t row) const {
        py::array_t<float> out(store_.dim());
        store_.read_row(row, out.mutable_data());
        return out;
    }
    TileStore store_;
};

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "jzi's C++ runtime (see jzi.native)";
    // Errors become the Python runtime's own exception types, so callers catch one set of names.
    // The references are kept for the life of the process (no destructor after the interpreter ends).
    auto keep = [](const char* module, const char* name) { return py::object(py::module_::import(module).attr(name)).release(); };
    static py::handle bundle_error = keep("jzi.runtime.bundle", "BundleError");
    static py::handle tiles_error = keep("jzi.runtime.tiles", "TileStoreError");
    static py::handle image_error = keep("jzi.runtime.images", "ImageError");
    static py::handle localizer_error = keep("jzi.runtime.localizer", "LocalizerError");
    static py::handle backend_error = keep("jzi.runtime.backends", "BackendUnavailable");
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error& e) {
            py::handle type;
            switch (e.kind()) {
                case ErrorKind::Bundle: type = bundle_error; break;
                case ErrorKind::TileStore: type = tiles_error; break;
                case ErrorKind::Image: type = image_error; break;
                case ErrorKind::Localizer: type = localizer_error; break;
                case ErrorKind::Backend: type = backend_error; break;
                case ErrorKind::Argument: type = PyExc_ValueError; break;
                case ErrorKind::Io: type = PyExc_OSError; break;
                default: type = PyExc_RuntimeError;
            }
            PyErr_SetString(type.ptr(), e.what());
        }
    });

    py::class_<PyLocalizer>(m, "Localizer")
        .def(py::init<const std::string&, const std::string&, const std::string&, int, bool>(), py::arg("bundle"),
             py::arg("tiles"), py::arg("backend") = "auto", py::arg("threads") = 0, py::arg("verify_bundle") = true)
        .def("localize_batch", &PyLocalizer::localize_batch, py::arg("images"), py::arg("beams") = 1,
             py::arg("max_pixels") = kMaxPixels)
        .def("zoom", &PyLocalizer::zoom, py::arg("query"), py::arg("beams") = 1)
        .def("describe", [](PyLocalizer& l) { return l.impl().describe(); })
        .def("backend_describe", [](PyLocalizer& l) { return l.impl().backend().describe(); })
        .def_property_readonly("image_size", [](PyLocalizer& l) { return l.impl().manifest().image_size; })
        .def_property_readonly("width", [](PyLocalizer& l) { return l.impl().manifest().width; })
        .def_property_readonly("steps", [](PyLocalizer& l) { return l.impl().region().steps; })
        .def_property_readonly("n_actions", [](PyLocalizer& l) { return l.impl().region().n_actions(); })
        .def_property_readonly("manifest_json", [](PyLocalizer& l) { return l.impl().manifest().doc.dump(); });

    py::class_<PyTileStore>(m, "TileStore")
        .def(py::init<const fs::path&>(), py::arg("path"))
        .def("read_row", &PyTileStore::read_row, py::arg("row"))
        .def_property_readonly("dim", [](const PyTileStore& s) { return s.store_.dim(); })
        .def_property_readonly("dtype", [](const PyTileStore& s) { return s.store_.dtype(); })
        .def_property_readonly("total_views", [](const PyTileStore& s) { return s.store_.total_views(); })
        .def_property_readonly("encoder_id", [](const PyTileStore& s) { return s.store_.encoder_id(); });

    m.def("load_manifest", [](const fs::path& path, bool verify) { return load_manifest(path, verify).doc.dump(); },
          py::arg("bundle"), py::arg("verify") = true, "Validate a bundle; its manifest as JSON text");
    m.def("decode_image", [](const py::bytes& data, int64_t max_pixels) {
        const std::string s = data;
        return mat_to_array(decode_image(reinterpret_cast<const uint8_t*>(s.data()), s.size(), max_pixels));
    }, py::arg("data"), py::arg("max_pixels") = kMaxPixels);
    m.def("header_size", [](const py::bytes& data) {
        const std::string s = data;
        const auto size = header_size(reinterpret_cast<const uint8_t*>(s.data()), s.size());
        if (!size) return py::object(py::none());
        const py::object to_int = py::module_::import("builtins").attr("int");  // sizes of any length, exactly
        return py::object(py::make_tuple(to_int(size->first.str()), to_int(size->second.str())));
    }, py::arg("data"));
    m.def("read_image", [](const fs::path& path, int64_t max_pixels) { return mat_to_array(read_image(path, max_pixels)); },
          py::arg("path"), py::arg("max_pixels") = kMaxPixels);
    m.def("street_input", [](const py::array& rgb, int image_size) {
        const cv::Mat img = array_to_mat(rgb);
        py::array_t<uint8_t> out({image_size, 2 * image_size, 3});
        street_input(img, image_size, out.mutable_data());
        return out;
    }, py::arg("rgb"), py::arg("image_size"));
    m.def("path_center", [](const std::string& region_json, const std::vector<int64_t>& path) {
        const Region r = region_from_json(Json::parse(region_json));
        const LatLon c = r.path_center(path.data(), static_cast<int>(path.size()));
        return py::make_tuple(c.lat, c.lon);
    }, py::arg("region_json"), py::arg("path"));
    m.def("available_backends", [](const fs::path& bundle) { return available_backends(load_manifest(bundle, false)); },
          py::arg("bundle"));
    m.def("onnxruntime_version", &ort_version);
    m.attr("tensorrt_compiled") = tensorrt_compiled();
}
