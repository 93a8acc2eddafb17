"""Satellite view sources: XYZ (tiledwebmaps), GeoTIFF in any CRS, in-memory raster; coverage errors."""
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_world_apart

from jzi.export.synthetic import WorldConfig
from jzi.runtime.geometry import Region
from jzi.runtime.imagery import (ArraySource, CoverageError, GeoTiffSource, ImageryError, XYZSource, open_source,
                                 view_pixel_latlon)

PX = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("imagery") / "world"
    make_world_apart(out, WorldConfig(seed=3, meters_per_pixel=10.0, sizes=(2, 1, 1)))
    return out


@pytest.fixture(scope="module")
def raster(world):
    """The world's raster as an ArraySource, read back from the GeoTIFF's pixels."""
    import rasterio

    with rasterio.open(world / "world.tif") as ds:
        img = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
        b = ds.bounds
    return ArraySource(img, (b.bottom, b.top, b.left, b.right))


def views_along(region, path):
    centers = region.view_centers(np.asarray(path))
    return [(centers[lvl], region.level_size_m(lvl)) for lvl in range(len(path) + 1)]


def mad(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_open_source_dispatches_on_format(world):
    assert isinstance(open_source(world / "satellite"), XYZSource)
    assert isinstance(open_source(world / "satellite" / "layout.yaml"), XYZSource)
    assert isinstance(open_source(world), XYZSource)  # a dataset root in the authors' format
    assert isinstance(open_source(world / "world.tif"), GeoTiffSource)


def test_xyz_matches_own_renderer_and_alignment_matters(world, raster):
    """tiledwebmaps (the authors' renderer) over the XYZ tiles agrees with jzi's raster renderer.

    A view shifted by a tenth of its side must disagree clearly more, so the agreement is about geometry.
    """
    xyz = open_source(world / "satellite")
    region = Region.default()
    for center, size in views_along(region, [6, 9, 5])[1:]:
        a = xyz.render(center, size, PX)
        b = raster.render(center, size, PX)
        assert a.shape == (PX, PX, 3) and a.dtype == np.uint8
        shifted = raster.render(region.child_center(center, size * 0.4, 0), size, PX)  # 0.15 side NW
        assert mad(a, b) < 14, (size, mad(a, b))
        assert mad(a, shifted) > 1.5 * mad(a, b), (size, mad(a, b), mad(a, shifted))


def test_geotiff_in_another_crs_renders_the_same_view(world, raster, tmp_path):
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    utm = tmp_path / "utm18n.tif"
    with rasterio.open(world / "world.tif") as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:32618", src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": "EPSG:32618", "transform": transform, "width": w, "height": h}
        with rasterio.open(utm, "w", **profile) as dst:
            for band in (1, 2, 3):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.bilinear)
    same_crs, other_crs = open_source(world / "world.tif"), open_source(utm)
    region = Region.default()
    center, size = views_along(region, [5, 6])[2]
    ref = raster.render(center, size, PX)
    assert mad(same_crs.render(center, size, PX), ref) < 3
    assert mad(other_crs.render(center, size, PX), ref) < 12


def test_views_are_north_up_and_west_left():
    # a raster whose red grows to the south and green to the east
    h = w = 200
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, h)[:, None]
    img[..., 1] = np.linspace(0, 255, w)[None, :]
    region = Region.default()
    src = ArraySource(img, region.bounds_latlon())
    v = src.render(region.center, 2000, 32).astype(int)
    assert v[-1, :, 0].mean() > v[0, :, 0].mean() + 10  # bottom row is south
    assert v[:, -1, 1].mean() > v[:, 0, 1].mean() + 10  # right column is east
    ll = view_pixel_latlon(region.center, 2000, 32)
    assert ll[0, 0, 0] > ll[-1, 0, 0] and ll[0, -1, 1] > ll[0, 0, 1]


@pytest.mark.parametrize("kind", ["xyz", "tif", "array"])
def test_leaving_the_coverage_is_an_error_naming_it_unless_padded(world, raster, kind):
    src = {"xyz": lambda: open_source(world / "satellite"), "tif": lambda: open_source(world / "world.tif"),
           "array": lambda: raster}[kind]()
    region = Region.default()
    s, n, w, e = region.bounds_latlon()
    outside = np.array([n, (w + e) / 2])  # a view centred on the region's north edge, 2 km wider than the margin
    with pytest.raises(CoverageError, match=r"coverage of .*lat .*lon"):
        src.render(outside, 3000, PX)
    padded = src.render(outside, 3000, PX, allow_padding=True, pad_value=7)
    assert padded.shape == (PX, PX, 3)
    # the north part lies beyond the imagery (coarse XYZ tiles themselves carry black there)
    assert np.isin(padded[:4], (0, 7) if kind == "xyz" else (7,)).all()
    assert not (padded[-4:] == 7).all()
    src.render(region.center, region.size_m, PX)  # the whole region is covered


def test_render_region_is_in_tile_store_order(world):
    region = Region(*Region.default().center, size_m=10000, steps=2, view_px=32)
    src = open_source(world / "satellite")
    views = src.render_region(region)
    assert views.shape == (17, 32, 32, 3)
    for idx in (0, 1, 7, 16):
        level = 0 if idx == 0 else 1
        path = region.index_path(level, idx - region.level_offset(level))
        center = region.view_centers(path)[-1]
        np.testing.assert_array_equal(views[idx], src.render(center, region.level_size_m(level), 32))


def test_bad_imagery_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(ImageryError, match="no such"):
        open_source(tmp_path / "nope")
    (tmp_path / "online").mkdir()
    (tmp_path / "online" / "layout.yaml").write_text("preset: XYZ\nmin_zoom: 0\nmax_zoom: 3\nurl: http://x/{zoom}\n")
    with pytest.raises(ImageryError, match="local tiles only"):
        open_source(tmp_path / "online")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "layout.yaml").write_text("preset: XYZ\nmin_zoom: 0\nmax_zoom: 3\n")
    with pytest.raises(ImageryError, match="no tiles"):
        open_source(tmp_path / "empty")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(ImageryError, match="not a readable GeoTIFF"):
        open_source(tmp_path / "bad.tif")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ImageryError, match="unknown imagery format"):
        open_source(tmp_path / "x.png")


def test_imagery_module_does_not_import_torch():
    code = "import sys, jzi.runtime.imagery; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_xyz_coverage_without_a_declared_one_comes_from_the_tiles(world, tmp_path):
    import shutil

    folder = tmp_path / "sat"
    shutil.copytree(world / "satellite", folder)
    layout = folder / "layout.yaml"
    layout.write_text("\n".join(l for l in layout.read_text().splitlines() if not l.startswith("coverage")) + "\n")
    declared, scanned = open_source(world / "satellite").coverage, open_source(folder).coverage
    assert scanned != declared
    s, n, w, e = scanned  # whole max-zoom tiles: they reach at least as far as the raster
    assert s <= declared[0] and n >= declared[1] and w <= declared[2] and e >= declared[3]
    assert n - s < (declared[1] - declared[0]) * 2
