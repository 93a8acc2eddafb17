// Zoom-path pictures, drawn step for step as runtime/viz.py draws them.
#include "jzi/viz.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "jzi/codecs.h"
#include "jzi/error.h"

namespace jzi {
namespace {
constexpr int kPanel = 256;  // panel height in pixels
const cv::Scalar kChosen(255, 210, 0), kGrid(255, 255, 255), kTruth(255, 40, 40), kText(20, 20, 20), kWhite(255, 255, 255);  // RGB
constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kScale = 0.45;

int py_round(double x) { return static_cast<int>(std::nearbyint(x)); }  // Python's round: half to even

void label(cv::Mat& img, const std::string& text, int y, int x = 6, const cv::Scalar& colour = kText) {
    cv::putText(img, text, {x, y}, kFont, kScale, colour, 1, cv::LINE_AA);
}

int text_width(const std::string& text) { return cv::getTextSize(text, kFont, kScale, 1, nullptr).width; }

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), f, v);
    return buf;
}

std::string distance_text(double metres) { return metres >= 1000 ? fmt("%.1f km", metres / 1000) : fmt("%.0f m", metres); }

// (x, y) of `truth` in the pixels of the `px`-wide view at `level` centred on `centre`; outside 0..px
// when the truth lies outside the view (the edges are moves from the centre, as square_bounds).
cv::Point2d truth_offset(const Region& r, LatLon centre, int level, LatLon truth, int px) {
    const double half = r.level_size_m(level) / 2;
    const double north = move(centre, 0.0, half).lat, south = move(centre, 0.0, -half).lat;
    const double east = move(centre, 90.0, half).lon, west = move(centre, 90.0, -half).lon;
    return {(truth.lon - west) / (east - west) * px, (north - truth.lat) / (north - south) * px};
}

void truth_marker(cv::Mat& panel, cv::Point xy) {
    cv::circle(panel, xy, 6, kTruth, 2, cv::LINE_AA);
    cv::drawMarker(panel, xy, kTruth, cv::MARKER_CROSS, 8, 2);
}

// An arrow at the panel's edge pointing towards a truth outside it, labelled with its distance.
void truth_arrow(cv::Mat& panel, double x, double y, const std::string& distance) {
    const int h = panel.rows;
    const double c = h / 2.0, dx = x - c, dy = y - c;
    const double scale = (c - 6) / std::max(std::fabs(dx), std::fabs(dy));  // onto the square 6 px inside the edge
    const cv::Point tip(py_round(c + dx * scale), py_round(c + dy * scale));
    const cv::Point tail(py_round(c + dx * scale * 0.72), py_round(c + dy * scale * 0.72));
    cv::arrowedLine(panel, tail, tip, kTruth, 3, cv::LINE_AA, 0, 0.35);
    int baseline = 0;
    const cv::Size ts = cv::getTextSize(distance, kFont, kScale, 1, &baseline);
    const auto clip = [](double v, double lo, double hi) { return static_cast<int>(std::min(std::max(v, lo), hi)); };  // int(np.clip(...))
    const int tx = clip(tail.x - ts.width / 2.0, 2, h - ts.width - 2);
    const int ty = clip(tail.y + (dy < 0 ? ts.height + 8 : -8), ts.height + 2, h - 4);
    cv::rectangle(panel, {tx - 2, ty - ts.height - 3}, {tx + ts.width + 2, ty + 3}, kWhite, -1);
    cv::putText(panel, distance, {tx, ty}, kFont, kScale, kTruth, 1, cv::LINE_AA);
}

// Swatches and words for what the panels show, left to right along row y.
void legend(cv::Mat& canvas, int y, bool with_truth) {
    int x = 8;
    cv::rectangle(canvas, {x, y - 11}, {x + 14, y + 3}, kChosen, 3);
    x += 22;
    std::string text = "chosen cell (p = the model's probability for it)";
    label(canvas, text, y, x);
    x += text_width(text) + 24;
    if (!with_truth) return;
    truth_marker(canvas, {x + 6, y - 4});
    x += 20;
    text = "true position";
    label(canvas, text, y, x);
    x += text_width(text) + 24;
    cv::arrowedLine(canvas, {x, y - 4}, {x + 18, y - 4}, kTruth, 3, cv::LINE_AA, 0, 0.4);
    x += 26;
    label(canvas, "true position outside the view, its distance from the view centre", y, x);
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
        const int level = static_cast<int>(lvl);
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
        if (truth) {
            const cv::Point2d xy = truth_offset(region, centre, level, *truth, h);
            if (xy.x >= 0 && xy.x <= h && xy.y >= 0 && xy.y <= h)
                truth_marker(panel, {py_round(xy.x), py_round(xy.y)});
            else
                truth_arrow(panel, xy.x, xy.y, distance_text(distance_m(centre, *truth)));
        }
        const std::string prob = lvl < step_probs.size() ? fmt(" p=%.2f", step_probs[lvl]) : "";
        titles.push_back("level " + std::to_string(lvl) + ": " + fmt("%g", region.level_size_m(level)) + " m, cell " +
                         std::to_string(path[lvl]) + prob);
        panels.push_back(panel);
        centre = region.child_center(centre, region.level_size_m(level), path[lvl]);
    }
    const int gap = 8;
    int width = gap * static_cast<int>(panels.size() + 1);
    for (const auto& p : panels) width += p.cols;
    cv::Mat canvas(h + 84, std::max(width, 900), CV_8UC3, cv::Scalar::all(255));
    int x = gap;
    for (size_t i = 0; i < panels.size(); ++i) {
        panels[i].copyTo(canvas(cv::Rect(x, 28, panels[i].cols, h)));
        cv::Mat sub = canvas(cv::Rect(x, 0, panels[i].cols, canvas.rows));
        label(sub, titles[i], 18);
        x += panels[i].cols + gap;
    }
    if (!caption.empty()) label(canvas, caption, h + 50);
    legend(canvas, h + 74, truth.has_value());
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
        ok = codecs_write(tmp.string(), bgr);
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
