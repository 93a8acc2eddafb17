// Zoom geometry: regions, cells, great-circle moves, distances, tile indexing (runtime/geometry.py).
//
// A view at level l is a north-up square of side s_l metres, s_{l+1} = s_l / grid. Action index =
// row * grid + col, row 0 north, col 0 west. Moves are great-circle destination points on a sphere of
// radius 6 378 137 m: first east (bearing 90) by the east offset, then north (bearing 0).
#pragma once

#include <cstdint>
#include <vector>

namespace jzi {

constexpr double kEarthRadiusM = 6378137.0;

struct LatLon {
    double lat = 0.0;
    double lon = 0.0;
};

// Great-circle destination of `from` after `distance_m` along `bearing_deg`.
LatLon move(LatLon from, double bearing_deg, double distance_m);
// East (bearing 90) then north (bearing 0), as the authors step between cells.
LatLon move_en(LatLon from, double east_m, double north_m);
// Haversine distance in metres on the 6 378 137 m sphere.
double distance_m(LatLon a, LatLon b);

struct Region {
    double center_lat = 0.0;
    double center_lon = 0.0;
    double size_m = 10000.0;
    int grid = 4;
    int steps = 4;
    int view_px = 384;

    LatLon center() const { return {center_lat, center_lon}; }
    int n_actions() const { return grid * grid; }
    double level_size_m(int level) const;
    double meters_per_pixel(int level) const { return level_size_m(level) / view_px; }
    double cell_size_m() const { return level_size_m(steps); }

    // Centre of child `action` of the square (`center`, `size_m`).
    LatLon child_center(LatLon center, double size_m, int64_t action) const;
    // Centre of the cell reached by `path` (level 0 .. path.size()).
    LatLon path_center(const int64_t* path, int length) const;

    // Tile-store indexing: views numbered level by level, a path is a base-(grid^2) number.
    int64_t n_views(int level) const;
    int64_t level_offset(int level) const;
    int64_t total_views() const { return level_offset(steps); }
    int64_t path_index(const int64_t* path, int length) const;
};

}  // namespace jzi
