"""Zoom geometry against DESIGN §2 and against the authors' geodesy (tiledwebmaps)."""
import os

import numpy as np
import pytest

from jzi.runtime.geometry import Region, distance_m, move, move_en, square_bounds

_proj_data = os.environ.get("PROJ_DATA")
twm_geo = pytest.importorskip("tiledwebmaps.geo", reason="tiledwebmaps (the authors' geodesy) is in the geo extra")
# importing tiledwebmaps points PROJ_DATA at its own older proj.db, which breaks rasterio/pyproj in
# every later test of the session; its geodesy does not need it, so restore the setting at once
if _proj_data is None:
    os.environ.pop("PROJ_DATA", None)
else:
    os.environ["PROJ_DATA"] = _proj_data


def test_move_matches_tiledwebmaps():
    rng = np.random.default_rng(0)
    for _ in range(500):
        ll = np.array([rng.uniform(-80, 80), rng.uniform(-179, 179)])
        bearing = rng.uniform(-360, 360)
        dist = rng.uniform(-50_000, 50_000)
        ours = move(ll, bearing, dist)
        theirs = twm_geo.move_from_latlon(ll, bearing, dist)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_move_is_vectorised():
    rng = np.random.default_rng(1)
    ll = np.stack([rng.uniform(-60, 60, 64), rng.uniform(-170, 170, 64)], -1)
    b, d = rng.uniform(0, 360, 64), rng.uniform(0, 9000, 64)
    batch = move(ll, b, d)
    one = np.stack([move(ll[i], b[i], d[i]) for i in range(64)])
    np.testing.assert_array_equal(batch, one)


def test_distance_matches_tiledwebmaps():
    rng = np.random.default_rng(2)
    a = np.stack([rng.uniform(-80, 80, 1000), rng.uniform(-180, 180, 1000)], -1)
    b = a + rng.normal(0, 0.05, a.shape)
    np.testing.assert_allclose(distance_m(a, b), twm_geo.distance(a, b), rtol=0, atol=1e-6)
    # and it is the distance that move() travels
    p = move(a, 37.0, 1234.5)
    np.testing.assert_allclose(distance_m(a, p), 1234.5, atol=1e-6)


def test_default_region_centre_and_bounds():
    r = Region.default()
    assert r.size_m == 10_000 and r.grid == 4 and r.steps == 4
    assert r.center_lat == pytest.approx(38.89360, abs=5e-6)
    assert r.center_lon == pytest.approx(-76.98852, abs=5e-6)
    # the authors' construction, step by step with their own function
    expected = twm_geo.move_from_latlon(twm_geo.move_from_latlon(np.array([38.8936, -77.0116]), 90, 2000.0), 0, 0.0)
    np.testing.assert_allclose(r.center, expected, atol=1e-12)
    s, n, w, e = r.bounds_latlon()
    assert (round(s, 4), round(n, 4)) == (38.8487, 38.9385)
    assert (round(w, 4), round(e, 4)) == (-77.0462, -76.9308)
    assert r.cell_size_m == pytest.approx(39.0625)
    assert r.total_views == 1 + 16 + 256 + 4096


def test_child_offsets_follow_the_convention():
    r = Region.default()
    # action 0 = north-west corner cell, 15 = south-east; action 6 = row 1, col 2
    c = r.center
    nw = r.child_center(c, r.size_m, 0)
    se = r.child_center(c, r.size_m, 15)
    assert nw[0] > c[0] and nw[1] < c[1] and se[0] < c[0] and se[1] > c[1]
    np.testing.assert_allclose(nw, move_en(c, -3750.0, 3750.0), atol=1e-12)
    np.testing.assert_allclose(r.child_center(c, r.size_m, 6), move_en(c, 1250.0, 1250.0), atol=1e-12)
    # the same moves done with the authors' function
    theirs = twm_geo.move_from_latlon(twm_geo.move_from_latlon(c, 90, 1250.0), 0, 1250.0)
    np.testing.assert_allclose(r.child_center(c, r.size_m, 6), theirs, atol=1e-9)


def test_ground_truth_path_decodes_within_half_diagonal():
    r = Region.default()
    s, n, w, e = r.bounds_latlon()
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(s, n, 5000), rng.uniform(w, e, 5000)], -1)
    paths = r.ground_truth_path(pts)
    assert paths.shape == (5000, 4) and paths.min() >= 0 and paths.max() <= 15
    err = distance_m(r.path_center(paths), pts)
    half_diag = r.cell_size_m / np.sqrt(2)
    assert half_diag == pytest.approx(27.62, abs=0.01)
    assert err.max() <= half_diag + 0.05, err.max()
    # a point at a cell centre decodes to itself
    centers = r.path_center(paths)
    np.testing.assert_array_equal(r.ground_truth_path(centers), paths)


def test_border_clamping_rule():
    """row = int(frac_from_north * 4), col = int(frac_from_west * 4), clamped to 0..3."""
    r = Region.default()
    south, north, west, east = square_bounds(r.center, r.size_m)
    lat_mid, lon_mid = r.center
    at = lambda lat, lon: int(r.ground_truth_path(np.array([lat, lon]), steps=1)[0])
    assert at(north, west) == 0  # the north-west corner itself: frac 0 -> cell 0
    assert at(south, east) == 15  # frac 1 -> int(4) = 4, clamped to 3
    assert at(north + 0.01, west - 0.01) == 0  # outside: clamped
    assert at(south - 0.01, east + 0.01) == 15
    # exactly on an inner border the cell south/east of it is taken (int truncation)
    lat_border = north - 0.25 * (north - south)
    lon_border = west + 0.5 * (east - west)
    assert at(lat_border, lon_border) == 1 * 4 + 2
    eps = 1e-9
    assert at(lat_border + eps, lon_border - eps) == 0 * 4 + 1


def test_tile_indexing_children_are_contiguous():
    r = Region.default()
    rng = np.random.default_rng(4)
    for level in range(1, 4):
        paths = rng.integers(0, 16, (100, level))
        idx = r.path_index(paths)
        np.testing.assert_array_equal(r.index_path(level, idx), paths)
        parent = r.path_index(paths[:, :-1])
        np.testing.assert_array_equal(idx, parent * 16 + paths[:, -1])
    assert [r.level_offset(l) for l in range(5)] == [0, 1, 17, 273, 4369]


def test_region_roundtrip_and_meters_per_pixel():
    r = Region.default()
    assert Region.from_dict(r.to_dict()) == r
    assert r.meters_per_pixel(0) == pytest.approx(10_000 / 384)
    assert r.meters_per_pixel(3) == pytest.approx(156.25 / 384)
