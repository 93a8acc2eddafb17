// Zoom-path pictures, drawn step for step as runtime/viz.py draws them.
#include "jzi/viz.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jzi/error.h"

namespace jzi {
namespace {
constexpr int kPanel = 256;  // panel height in pixels
const cv::Scalar kChosen(255, 210, 0), kGrid(255, 255, 255), kTruth(255, 40, 40), kText(20, 20, 20);  // RGB

void label(cv::Mat& img, const std::string& text, int y) {
    cv::putText(img, text, {6, y}, cv::FONT_HERSHEY_SIMPLEX, 0.45, kText, 1, cv::LINE_AA);
}

int py_round(double x) { return static_cast<int>(std::nearbyint(x)); }  // Python's round: half to even

// (x, y) of `truth` inside the view at `level` centred on `centre`, or nothing when outside it.
std::optional<cv::Point> truth_pixel(const Region& r, LatLon centre, int level, LatLon truth, int px) {
    const double half = r.level_size_m(level) / 2;
    const double north = move(centre, 0.0, half).lat, south = move(centre, 0.0, -half).lat;
    const double east = move(centre, 90.0, half).lon, west = move(centre, 90.0, -half).lon;
    const double fx = (truth.lon - west) / (east - west), fy = (north - truth.lat) / (north - south);
    if (!(fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1)) return std::nullopt;
    return cv::Point(py_round(fx * px), py_round(fy * px));
}
}  // namespace

std::vector<cv::Mat> view_images(const TileStore& store, const std::vector<int64_t>& path) {
    if (!store.has_pixels())
        throw ArgumentError("drawing the zoom path needs view pixels: build the store with jzi-tiles build --thumbs PX");
    std::vector<cv::Mat> out;
    const Region& r = store.region();
    for (int lvl = 0; lvl < r.steps; ++lvl) {
        const int64_t row = store.row(lvl, r.path_index(path.data(), lvl));
        const int px = store.thumb_px();
        out.push_back(cv::Mat(px, px, CV_8UC3, const_cast<uint8_t*>(store.pixels(row))).clone());
    }
    return out;
}

cv::Mat draw_zoom(const cv::Mat& photo, const std::vector<cv::Mat>& views, const Region& region, const std::vector<int64_t>& path,
                  const std::vector<double>& step_probs, std::optional<LatLon> truth, const std::string& caption) {
    const int g = region.grid, h = kPanel;
    const int photo_w = std::min(2 * h, std::max(1, py_round(double(photo.cols) * h / photo.rows)));
    std::vector<cv::Mat> panels(1);
    cv::resize(photo, panels[0], {photo_w, h}, 0, 0, cv::INTER_AREA);
    std::vector<std::string> titles = {"query"};
    LatLon centre = region.center();
    for (size_t lvl = 0; lvl < views.size(); ++lvl) {
        cv::Mat panel;
        cv::resize(views[lvl], panel, {h, h}, 0, 0, views[lvl].rows < h ? cv::INTER_LINEAR : cv::INTER_AREA);
        const double cell = double(h) / g;
        for (int i = 1; i < g; ++i) {
            const int c = py_round(i * cell);
            cv::line(panel, {c, 0}, {c, h - 1}, kGrid, 1);
            cv::line(panel, {0, c}, {h - 1, c}, kGrid, 1);
        }
        const int row = static_cast<int>(path[lvl] / g), col = static_cast<int>(path[lvl] % g);
        const int x0 = py_round(col * cell), y0 = py_round(row * cell);
        cv::rectangle(panel, {x0, y0}, {py_round(x0 + cell) - 1, py_round(y0 + cell) - 1}, kChosen, 3);
        if (truth)
            if (const auto xy = truth_pixel(region, centre, static_cast<int>(lvl), *truth, h)) {
                cv::circle(panel, *xy, 6, kTruth, 2, cv::LINE_AA);
                cv::drawMarker(panel, *xy, kTruth, cv::MARKER_CROSS, 8, 2);
            }
        char title[128];
        const std::string prob = lvl < step_probs.size() ? " p=" + cv::format("%.2f", step_probs[lvl]) : "";
        std::snprintf(title, sizeof(title), "level %zu: %g m, cell %lld%s", lvl, region.level_size_m(static_cast<int>(lvl)),
                      static_cast<long long>(path[lvl]), prob.c_str());
        titles.push_back(title);
        panels.push_back(panel);
        centre = region.child_center(centre, region.level_size_m(static_cast<int>(lvl)), path[lvl]);
    }
    const int gap = 8;
    int width = gap * static_cast<int>(panels.size() + 1);
    for (const auto& p : panels) width += p.cols;
    cv::Mat canvas(h + 60, width, CV_8UC3, cv::Scalar::all(255));
    int x = gap;
    for (size_t i = 0; i < panels.size(); ++i) {
        panels[i].copyTo(canvas(cv::Rect(x, 28, panels[i].cols, h)));
        cv::Mat sub = canvas(cv::Rect(x, 0, panels[i].cols, canvas.rows));
        label(sub, titles[i], 18);
        x += panels[i].cols + gap;
    }
    if (!caption.empty()) label(canvas, caption, h + 50);
    return canvas;
}

void save_rgb(const std::string& path, const cv::Mat& rgb) {
    namespace fs = std::filesystem;
    const fs::path out(path);
    if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
    const std::string ext = out.extension().empty() ? ".png" : out.extension().string();
    const fs::path tmp = out.parent_path() / ("." + out.stem().string() + ".tmp" + ext);
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    bool ok = false;
    try {
        ok = cv::imwrite(tmp.string(), bgr);
    } catch (const cv::Exception&) {
        ok = false;
    }
    if (!ok) {
        fs::remove(tmp);
        throw ArgumentError(path + ": cannot write a picture with this extension (use .png or .jpg)");
    }
    fs::rename(tmp, out);
}

}  // namespace jzi
