// Draw a zoom path as runtime/viz.py does: the query photo, then one panel per step with the view (the
// store's thumbnail), its grid, the chosen cell and, when known, the true position; a legend below.
// OpenCV only.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "jzi/geometry.h"
#include "jzi/tiles.h"

namespace jzi {

// The thumbnails along `path` (levels 0 .. steps-1); Error(Argument) when the store has none.
std::vector<cv::Mat> view_images(const TileStore& store, const std::vector<int64_t>& path);

// One RGB picture: photo | view 0 | view 1 | ... with grids, chosen cells, the truth on every panel (a
// marker inside the view, an arrow with its distance at the edge outside it), a caption and a legend.
cv::Mat draw_zoom(const cv::Mat& photo, const std::vector<cv::Mat>& views, const Region& region, const std::vector<int64_t>& path,
                  const std::vector<double>& step_probs, std::optional<LatLon> truth, const std::string& caption);

// Write an RGB picture atomically (a temp name beside it, then a rename).
void save_rgb(const std::string& path, const cv::Mat& rgb);

}  // namespace jzi
