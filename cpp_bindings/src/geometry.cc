// Zoom geometry, operation for operation as runtime/geometry.py (numpy), so answers agree to the last bits.
#include "jzi/geometry.h"

#include <cmath>

namespace jzi {
namespace {
constexpr double kPi = 3.14159265358979323846;
double radians(double deg) { return deg * (kPi / 180.0); }  // numpy's deg2rad
double degrees(double rad) { return rad * (180.0 / kPi); }  // numpy's rad2deg

// Python's float modulo (the result takes the sign of the divisor), as numpy's remainder.
double py_mod(double a, double b) {
    double m = std::fmod(a, b);
    if (m != 0.0 && ((b < 0) != (m < 0))) m += b;
    return m;
}
}  // namespace

LatLon move(LatLon from, double bearing_deg, double distance_m) {
    const double lat1 = radians(from.lat), lon1 = radians(from.lon);
    const double brg = radians(bearing_deg);
    const double ang = distance_m / kEarthRadiusM;
    const double lat2 = std::asin(std::sin(lat1) * std::cos(ang) + std::cos(lat1) * std::sin(ang) * std::cos(brg));
    double lon2 = lon1 + std::atan2(std::sin(brg) * std::sin(ang) * std::cos(lat1),
                                    std::cos(ang) - std::sin(lat1) * std::sin(lat2));
    lon2 = py_mod(lon2 + kPi, 2 * kPi) - kPi;  // wrap into [-pi, pi)
    return {degrees(lat2), degrees(lon2)};
}

LatLon move_en(LatLon from, double east_m, double north_m) { return move(move(from, 90.0, east_m), 0.0, north_m); }

double distance_m(LatLon p, LatLon q) {
    const double a0 = radians(p.lat), a1 = radians(p.lon), b0 = radians(q.lat), b1 = radians(q.lon);
    const double s0 = std::sin((a0 - b0) / 2), s1 = std::sin((a1 - b1) / 2);
    const double h = s0 * s0 + std::cos(a0) * std::cos(b0) * s1 * s1;
    return 2 * kEarthRadiusM * std::atan2(std::sqrt(h), std::sqrt(1 - h));
}

double Region::level_size_m(int level) const { return size_m / std::pow(static_cast<double>(grid), level); }

LatLon Region::child_center(LatLon c, double size, int64_t action) const {
    const int64_t row = action / grid, col = action % grid;
    const double cell = size / grid;
    const double east = (col + 0.5) * cell - size / 2;
    const double north = -((row + 0.5) * cell - size / 2);
    return move_en(c, east, north);
}

LatLon Region::path_center(const int64_t* path, int length) const {
    LatLon c = center();
    for (int level = 0; level < length; ++level) c = child_center(c, level_size_m(level), path[level]);
    return c;
}

int64_t Region::n_views(int level) const {
    int64_t n = 1;
    for (int i = 0; i < level; ++i) n *= n_actions();
    return n;
}

int64_t Region::level_offset(int level) const {
    int64_t total = 0;
    for (int l = 0; l < level; ++l) total += n_views(l);
    return total;
}

int64_t Region::path_index(const int64_t* path, int length) const {
    int64_t index = 0;
    for (int level = 0; level < length; ++level) index = index * n_actions() + path[level];
    return index;
}

}  // namespace jzi
