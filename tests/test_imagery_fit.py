"""Does the imagery suit the region? A real-looking 4-band UTM GeoTIFF at 5 m/px (2.6 x 2.0 km) under
a 1.6 km region: the levels whose views it can only upsample are named (build warning, jzi-tiles info),
and a region it does not cover is refused with a --center/--size-m that fits."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from runtime_fixtures import bundle, rt_base  # noqa: F401

from jzi.runtime import tiles_cli
from jzi.runtime.geometry import Region
from jzi.runtime.imagery import (CoverageError, GeoTiffSource, check_region_fits, coarse_imagery_warning,
                                 fitting_region, upsampled_levels)
from jzi.runtime.tiles import TileStore, build_store

UTM_CENTRE = (325000.0, 4306000.0)  # EPSG:32618 metres, in Washington DC
WIDTH_M, HEIGHT_M, MPP = 2600, 2000, 5.0


@pytest.fixture(scope="module")
def utm_tif(tmp_path_factory):
    import rasterio
    from affine import Affine

    path = tmp_path_factory.mktemp("utm") / "utm_5m.tif"
    w, h = int(WIDTH_M / MPP), int(HEIGHT_M / MPP)
    west, north = UTM_CENTRE[0] - WIDTH_M / 2, UTM_CENTRE[1] + HEIGHT_M / 2
    img = np.random.default_rng(0).integers(0, 255, (4, h, w), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint8", crs="EPSG:32618",
                       transform=Affine(MPP, 0.0, west, 0.0, -MPP, north)) as ds:
        ds.write(img)
    return path


def _region_in(src, size_m=1600.0, view_px=64):
    (centre, _) = fitting_region(src)
    return Region(center_lat=centre[0], center_lon=centre[1], size_m=size_m, grid=4, steps=4, view_px=view_px)


def test_geotiff_resolution_is_measured_in_metres(utm_tif):
    src = GeoTiffSource(utm_tif)
    assert src.meters_per_pixel(_region_in(src).center) == pytest.approx(MPP, rel=0.01)


def test_upsampled_levels_are_named_with_both_resolutions(utm_tif):
    src = GeoTiffSource(utm_tif)
    region = _region_in(src)  # views of 1600/400/100/25 m at 64 px: 25, 6.25, 1.56, 0.39 m/px
    mpp = src.meters_per_pixel(region.center)  # about 5 m (UTM metres are not quite the sphere's)
    up = upsampled_levels(region, mpp)
    assert [lvl for lvl, _ in up] == [2, 3]
    assert up[-1][1] == pytest.approx(12.8, rel=0.01)
    line = coarse_imagery_warning(region, mpp)
    assert "\n" not in line
    assert f"has {mpp:.2f} m/px" in line and "level 2 views need 1.56 m/px" in line and "levels 2-3" in line and "12.8x" in line
    assert coarse_imagery_warning(replace(region, size_m=100_000.0), MPP) is None  # coarse levels only: fine
    assert coarse_imagery_warning(region, None) is None  # unknown resolution: nothing to say


def test_a_region_outside_the_imagery_is_refused_with_one_that_fits(utm_tif):
    src = GeoTiffSource(utm_tif)
    region = replace(_region_in(src), size_m=3000.0)
    with pytest.raises(CoverageError) as e:
        check_region_fits(src, region)
    msg = str(e.value)
    assert "a region that fits: --center " in msg and "\n" not in msg
    centre = [float(v) for v in msg.split("--center ")[1].split(" ")[0].split(",")]
    size = float(msg.split("--size-m ")[1])
    # close to the imagery's short side (a GeoTIFF covers a view when all its pixel centres on an 8 x 8
    # grid fall inside the raster, so up to 8/7 of the side passes)
    assert 1800 <= size <= HEIGHT_M * 8 / 7
    check_region_fits(src, replace(region, center_lat=centre[0], center_lon=centre[1], size_m=size))  # fits


def test_build_warns_records_the_resolution_and_info_names_the_levels(utm_tif, bundle, tmp_path,  # noqa: F811
                                                                       monkeypatch, capsys):
    """The wiring through build_store and jzi-tiles info (a stand-in encoder: what it computes is not the point)."""
    from jzi.runtime import backends

    class ZeroEncoder:
        def encode_views(self, views):
            return np.zeros((len(views), 96), np.float32)

    monkeypatch.setattr(backends, "open_backend", lambda *a, **k: ZeroEncoder())
    src = GeoTiffSource(utm_tif)
    region = _region_in(src)
    warnings = []
    out = build_store(tmp_path / "r.jzt", bundle, utm_tif, region=region, progress=False, warn=warnings.append)
    assert len(warnings) == 1 and "levels 2-3" in warnings[0]
    assert TileStore(out).summary()["source_meters_per_pixel"] == pytest.approx(MPP, rel=0.01)
    assert tiles_cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    level_lines = [line for line in text.splitlines() if line.strip().startswith("level ")]
    assert ["upsampled" in line for line in level_lines] == [False, False, True, True]
    assert "upsampled 12.8x" in level_lines[3]
    assert "levels upsampled from coarser imagery: 2, 3" in text


def test_cli_build_of_a_region_outside_the_imagery_is_one_line(utm_tif, bundle, tmp_path, capsys):  # noqa: F811
    src = GeoTiffSource(utm_tif)
    centre = _region_in(src).center
    rc = tiles_cli.main(["build", "--engine", str(bundle), "--source", str(utm_tif), "-o", str(tmp_path / "r.jzt"),
                         "--center", f"{centre[0]},{centre[1]}", "--size-m", "3000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "a region that fits: --center" in err[0]
    assert not list(tmp_path.iterdir())
