"""Satellite imagery sources: render a north-up square view of any place from real map formats.

One interface for every source::

    src = open_source("path/to/satellite")            # XYZ folder with layout.yaml, or a GeoTIFF
    img = src.render(center_latlon, size_m, px)       # uint8 RGB [px, px, 3], north-up

- :class:`XYZSource` reads a tiledwebmaps ``layout.yaml`` over local ``{zoom}/{x}/{y}.jpg`` tiles and
  renders with tiledwebmaps itself (the authors' renderer), so views match the authors' exactly.
- :class:`GeoTiffSource` reads a GeoTIFF in any CRS (rasterio + pyproj, imported lazily), windowed
  and decimated, so a large raster is never loaded whole.
- :class:`ArraySource` renders from an in-memory raster on a latitude/longitude grid (the synthetic
  world uses it).

A view that leaves the imagery's coverage raises :class:`CoverageError` naming the coverage,
unless the caller passes ``allow_padding=True`` (then the outside is filled with ``pad_value``).

Torch-free (numpy and OpenCV; tiledwebmaps/rasterio/pyproj only when their source is used).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .geometry import EARTH_RADIUS_M, Region, move_en, square_bounds

WEB_MERCATOR_HALF = math.pi * EARTH_RADIUS_M  # half the side of the EPSG:3857 square, metres
TILE_PX = 256


class ImageryError(ValueError):
    """Imagery that cannot be opened or used, with one line saying why."""


class CoverageError(ImageryError):
    """A view that leaves the imagery's coverage."""


# ---- pixel grids and tile math ------------------------------------------------------------------
def view_pixel_latlon(center_latlon, size_m: float, px: int) -> np.ndarray:
    """Lat/lon [px, px, 2] of the pixel centres of a north-up view (row 0 north, col 0 west).

    Each pixel is reached from the centre the way the zoom steps between cells: east, then north.
    """
    offsets = ((np.arange(px) + 0.5) / px - 0.5) * float(size_m)
    east = np.broadcast_to(offsets[None, :], (px, px))
    north = np.broadcast_to(-offsets[:, None], (px, px))
    return move_en(np.asarray(center_latlon, dtype=np.float64), east, north)


def latlon_to_tile(latlon, zoom: int) -> np.ndarray:
    """Fractional XYZ (slippy-map) tile coordinates [..., 2] = (x, y) of lat/lon [..., 2]."""
    latlon = np.asarray(latlon, dtype=np.float64)
    n = 2.0**zoom
    x = (latlon[..., 1] + 180.0) / 360.0 * n
    lat = np.radians(latlon[..., 0])
    y = (1.0 - np.log(np.tan(lat) + 1.0 / np.cos(lat)) / math.pi) / 2.0 * n
    return np.stack([x, y], axis=-1)


def tile_to_latlon(xy, zoom: int) -> np.ndarray:
    """Inverse of :func:`latlon_to_tile`: lat/lon [..., 2] of fractional tile coordinates [..., 2]."""
    xy = np.asarray(xy, dtype=np.float64)
    n = 2.0**zoom
    lon = xy[..., 0] / n * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(math.pi * (1.0 - 2.0 * xy[..., 1] / n))))
    return np.stack([lat, lon], axis=-1)


def zoom_meters_per_pixel(zoom: int, lat: float) -> float:
    """Ground resolution of XYZ tiles at ``zoom`` and latitude ``lat``."""
    return 2 * WEB_MERCATOR_HALF * math.cos(math.radians(lat)) / (TILE_PX * 2.0**zoom)


def _fmt_bounds(b) -> str:
    s, n, w, e = b
    return f"lat {s:.6f}..{n:.6f}, lon {w:.6f}..{e:.6f}"


# ---- the interface ---------------------------------------------------------------------------------
class ImagerySource:
    """Base class: a coverage (south, north, west, east) in degrees and a renderer."""

    name = "imagery"
    coverage: tuple[float, float, float, float]

    def render(self, center_latlon, size_m: float, px: int, allow_padding: bool = False,
               pad_value: int = 0) -> np.ndarray:
        center = np.asarray(center_latlon, dtype=np.float64).reshape(2)
        if not np.isfinite(center).all() or not size_m > 0 or int(px) < 1:
            raise ImageryError(f"bad view: center {center.tolist()}, size {size_m} m, {px} px")
        if not allow_padding:
            self.check_covers(center, size_m)
        img = self._render(center, float(size_m), int(px), allow_padding, pad_value)
        return np.ascontiguousarray(img[..., :3], dtype=np.uint8)

    def render_many(self, centers, sizes_m, px: int, **kw) -> np.ndarray:
        """Views for centres [N, 2] and sizes (scalar or [N]) -> uint8 [N, px, px, 3]."""
        centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
        sizes = np.broadcast_to(np.asarray(sizes_m, dtype=np.float64), (len(centers),))
        out = np.empty((len(centers), px, px, 3), dtype=np.uint8)
        for i, (c, s) in enumerate(zip(centers, sizes)):
            out[i] = self.render(c, s, px, **kw)
        return out

    def render_region(self, region: Region, levels: int | None = None, progress: bool = False) -> np.ndarray:
        """Every zoom view of ``region`` in tile-store order (level by level) -> uint8 [V, px, px, 3].

        Views do not depend on the query, so training and tile stores render them once.
        """
        levels = region.steps if levels is None else levels
        centers, sizes = [], []
        for lvl in range(levels):
            paths = region.index_path(lvl, np.arange(region.n_views(lvl)))
            centers.append(region.view_centers(paths)[:, -1] if lvl else region.center[None])
            sizes.append(np.full(region.n_views(lvl), region.level_size_m(lvl)))
        centers, sizes = np.concatenate(centers), np.concatenate(sizes)
        out = np.empty((len(centers), region.view_px, region.view_px, 3), dtype=np.uint8)
        it = range(len(centers))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="render views", unit="view")
        for i in it:
            out[i] = self.render(centers[i], sizes[i], region.view_px)
        return out

    def covers(self, center_latlon, size_m: float) -> bool:
        """Whether the view's outer edges lie inside the coverage (a hair of tolerance for rounding)."""
        s, n, w, e = self.coverage
        vs, vn, vw, ve = square_edges(center_latlon, size_m)
        eps = 1e-7
        return bool(vs >= s - eps and vn <= n + eps and vw >= w - eps and ve <= e + eps)

    def check_covers(self, center_latlon, size_m: float) -> None:
        if not self.covers(center_latlon, size_m):
            c = np.asarray(center_latlon, dtype=np.float64).reshape(2)
            raise CoverageError(f"view of {size_m:g} m at ({c[0]:.6f}, {c[1]:.6f}) leaves the coverage of "
                                f"{self.name} ({_fmt_bounds(self.coverage)})")

    def meters_per_pixel(self, center_latlon) -> float | None:
        """Ground size of the imagery's own pixels near ``center_latlon`` (None when unknown)."""
        return None

    def _render(self, center, size_m, px, allow_padding, pad_value) -> np.ndarray:
        raise NotImplementedError


def square_edges(center_latlon, size_m):
    """(south, north, west, east) of the view's outer edges (not pixel centres)."""
    s, n, w, e = square_bounds(np.asarray(center_latlon, dtype=np.float64), size_m)
    return float(s), float(n), float(w), float(e)


def _remap(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, pad_value: int) -> np.ndarray:
    return cv2.remap(image, cols.astype(np.float32), rows.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3)


# ---- in-memory raster on a lat/lon grid -----------------------------------------------------------
class ArraySource(ImagerySource):
    """An RGB raster whose rows are linear in latitude and columns linear in longitude.

    ``bounds`` = (south, north, west, east) of the raster's outer edges. Downsampled views use an
    image pyramid (area-like averaging), so a 10 km view of a 2.5 m raster does not alias.
    """

    name = "in-memory raster"

    def __init__(self, image: np.ndarray, bounds: Sequence[float]):
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
            raise ImageryError(f"raster must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        self.pyramid = [image[..., :3]]
        self.coverage = tuple(float(b) for b in bounds)

    def _level(self, k: int) -> np.ndarray:
        while len(self.pyramid) <= k and min(self.pyramid[-1].shape[:2]) > 2:
            self.pyramid.append(cv2.pyrDown(self.pyramid[-1]))
        return self.pyramid[min(k, len(self.pyramid) - 1)]

    def raster_mpp(self) -> float:
        s, n, _, _ = self.coverage
        return math.radians(n - s) * EARTH_RADIUS_M / self.pyramid[0].shape[0]

    def meters_per_pixel(self, center_latlon) -> float:
        return self.raster_mpp()

    def _render(self, center, size_m, px, allow_padding, pad_value):
        return self.sample(view_pixel_latlon(center, size_m, px), size_m / px, pad_value)

    def sample(self, latlon: np.ndarray, out_mpp: float, pad_value: int = 0) -> np.ndarray:
        """Bilinear samples at lat/lon [..., 2] from the pyramid level that suits ``out_mpp``."""
        s, n, w, e = self.coverage
        h, wd = self.pyramid[0].shape[:2]
        rows = (n - latlon[..., 0]) / (n - s) * h - 0.5
        cols = (latlon[..., 1] - w) / (e - w) * wd - 0.5
        k = max(0, int(math.floor(math.log2(max(out_mpp / self.raster_mpp(), 1.0)))))
        img = self._level(k)
        fy, fx = img.shape[0] / h, img.shape[1] / wd
        return _remap(img, (rows + 0.5) * fy - 0.5, (cols + 0.5) * fx - 0.5, pad_value)


# ---- GeoTIFF in any CRS -----------------------------------------------------------------------------
class GeoTiffSource(ImagerySource):
    """A GeoTIFF (any CRS) read with rasterio; pixels located with pyproj."""

    def __init__(self, path):
        try:
            import rasterio
            from pyproj import Transformer
            from rasterio.warp import transform_bounds
        except ImportError as e:
            raise ImageryError(f"GeoTIFF imagery needs rasterio and pyproj ({e}); pip install 'jzi[geo]'") from None
        self.path = Path(path)
        self.name = str(self.path)
        try:
            self.ds = rasterio.open(self.path)
        except Exception as e:  # rasterio raises its own error types for every kind of bad file
            raise ImageryError(f"{self.path}: not a readable GeoTIFF ({str(e).splitlines()[0]})") from None
        if self.ds.crs is None:
            raise ImageryError(f"{self.path}: the GeoTIFF has no CRS")
        if self.ds.count < 3:
            raise ImageryError(f"{self.path}: needs 3 bands (RGB), has {self.ds.count}")
        self.to_crs = Transformer.from_crs("EPSG:4326", self.ds.crs, always_xy=True)
        west, south, east, north = transform_bounds(self.ds.crs, "EPSG:4326", *self.ds.bounds, densify_pts=21)
        self.coverage = (south, north, west, east)
        self.inverse = ~self.ds.transform

    def covers(self, center_latlon, size_m):
        # exact in the raster's own CRS: every pixel of the view must fall inside the raster
        rows, cols = self._pixel_coords(view_pixel_latlon(center_latlon, size_m, 8))
        h, w = self.ds.height, self.ds.width
        return bool((rows >= -0.5).all() and (rows <= h - 0.5).all() and (cols >= -0.5).all() and (cols <= w - 0.5).all())

    def meters_per_pixel(self, center_latlon) -> float:
        # a 100 m cross at the centre, measured in raster pixels (exact for any CRS, rotation included)
        rows, cols = self._pixel_coords(move_en(np.asarray(center_latlon, np.float64), np.array([0.0, 100.0, 0.0]),
                                                np.array([0.0, 0.0, 100.0])))
        east = math.hypot(rows[1] - rows[0], cols[1] - cols[0])
        north = math.hypot(rows[2] - rows[0], cols[2] - cols[0])
        return 100.0 / max(east, north, 1e-9)

    def _pixel_coords(self, latlon):
        x, y = self.to_crs.transform(latlon[..., 1], latlon[..., 0])
        a = self.inverse
        cols = a.a * x + a.b * y + a.c - 0.5
        rows = a.d * x + a.e * y + a.f - 0.5
        return rows, cols

    def _render(self, center, size_m, px, allow_padding, pad_value):
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        rows, cols = self._pixel_coords(view_pixel_latlon(center, size_m, px))
        r0 = max(int(np.floor(rows.min())) - 2, 0)
        c0 = max(int(np.floor(cols.min())) - 2, 0)
        r1 = min(int(np.ceil(rows.max())) + 3, self.ds.height)
        c1 = min(int(np.ceil(cols.max())) + 3, self.ds.width)
        if r1 <= r0 or c1 <= c0:
            return np.full((px, px, 3), pad_value, dtype=np.uint8)
        # decimate the read so that a raster pixel is about half an output pixel (antialiased)
        src_px = max((rows.max() - rows.min()) / px, (cols.max() - cols.min()) / px, 1e-9)
        factor = max(1.0, src_px / 2.0)
        out_h = max(1, int(round((r1 - r0) / factor)))
        out_w = max(1, int(round((c1 - c0) / factor)))
        data = self.ds.read([1, 2, 3], window=Window(c0, r0, c1 - c0, r1 - r0), out_shape=(3, out_h, out_w),
                            resampling=Resampling.average)
        img = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        fy, fx = out_h / (r1 - r0), out_w / (c1 - c0)
        return _remap(img, (rows - r0 + 0.5) * fy - 0.5, (cols - c0 + 0.5) * fx - 0.5, pad_value)


# ---- XYZ tiles via tiledwebmaps -------------------------------------------------------------------------
@contextlib.contextmanager
def _twm_proj_env():
    """tiledwebmaps points PROJ_DATA at its own (older) proj.db on import, which breaks rasterio and
    pyproj in the same process; give it that setting only while it runs."""
    saved = os.environ.get("PROJ_DATA")
    if "tiledwebmaps" not in sys.modules:
        os.environ.pop("PROJ_DATA", None)  # silence its "overwriting PROJ_DATA" print
        import tiledwebmaps  # noqa: F401
    os.environ["PROJ_DATA"] = os.path.join(os.path.dirname(sys.modules["tiledwebmaps"].__file__), "proj_data")
    try:
        yield sys.modules["tiledwebmaps"]
    finally:
        if saved is None:
            os.environ.pop("PROJ_DATA", None)
        else:
            os.environ["PROJ_DATA"] = saved


class XYZSource(ImagerySource):
    """A tiledwebmaps ``layout.yaml`` (``preset: XYZ``) over local tiles, rendered by tiledwebmaps."""

    def __init__(self, folder):
        folder = Path(folder)
        layout = folder / "layout.yaml" if folder.is_dir() else folder
        self.folder = layout.parent
        self.name = str(self.folder)
        if not layout.is_file():
            raise ImageryError(f"{folder}: no layout.yaml; an XYZ imagery folder needs one (tiledwebmaps layout)")
        try:
            import yaml

            with _twm_proj_env():
                pass
        except ImportError as e:
            raise ImageryError(f"XYZ imagery needs tiledwebmaps ({e}); pip install 'jzi[geo]'") from None
        try:
            cfg = yaml.safe_load(layout.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ImageryError(f"{layout}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(cfg, dict) or cfg.get("preset") != "XYZ":
            raise ImageryError(f"{layout}: only 'preset: XYZ' layouts are supported")
        if "url" in cfg:
            raise ImageryError(f"{layout}: has a 'url' (an online tile server); jzi reads local tiles only")
        try:
            self.min_zoom, self.max_zoom = int(cfg["min_zoom"]), int(cfg["max_zoom"])
        except (KeyError, TypeError, ValueError):
            raise ImageryError(f"{layout}: needs integer min_zoom and max_zoom") from None
        self.pattern = str(cfg.get("path", "{zoom}/{x}/{y}.jpg"))
        self.coverage = self._declared_coverage(cfg.get("coverage"), layout) or self._scan_coverage()
        with _twm_proj_env() as twm:
            self.loader = twm.Disk(path=str(self.folder / self.pattern), layout=twm.Layout.XYZ(),
                                   min_zoom=self.min_zoom, max_zoom=self.max_zoom, wait_after_last_modified=0.0)
        self._padded = {}

    def meters_per_pixel(self, center_latlon) -> float:
        return zoom_meters_per_pixel(self.max_zoom, float(np.asarray(center_latlon, np.float64).reshape(2)[0]))

    @staticmethod
    def _declared_coverage(value, layout):
        """Optional ``coverage: [south, north, west, east]`` (degrees) in layout.yaml, a jzi extension."""
        if value is None:
            return None
        try:
            s, n, w, e = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ImageryError(f"{layout}: coverage must be [south, north, west, east] in degrees") from None
        if not (-90 <= s < n <= 90 and -180 <= w < e <= 180):
            raise ImageryError(f"{layout}: coverage {value} is not a valid [south, north, west, east]")
        return (s, n, w, e)

    def _scan_coverage(self):
        """Bounds of the tiles present at max_zoom (pattern ``{zoom}/{x}/{y}.ext``)."""
        m = re.fullmatch(r"\{zoom\}/\{x\}/\{y\}(\.\w+)", self.pattern)
        if not m:
            raise ImageryError(f"{self.folder}: tile path {self.pattern!r} is not of the form {{zoom}}/{{x}}/{{y}}.ext")
        zdir = self.folder / str(self.max_zoom)
        xs, ys = [], []
        if zdir.is_dir():
            for xd in os.scandir(zdir):
                if xd.is_dir() and xd.name.isdigit():
                    for f in os.scandir(xd.path):
                        stem, ext = os.path.splitext(f.name)
                        if ext == m.group(1) and stem.isdigit():
                            xs.append(int(xd.name))
                            ys.append(int(stem))
        if not xs:
            raise ImageryError(f"{self.folder}: no tiles at max_zoom {self.max_zoom}")
        nw = tile_to_latlon([min(xs), min(ys)], self.max_zoom)
        se = tile_to_latlon([max(xs) + 1, max(ys) + 1], self.max_zoom)
        return (float(se[0]), float(nw[0]), float(nw[1]), float(se[1]))

    def _render(self, center, size_m, px, allow_padding, pad_value):
        try:
            with _twm_proj_env() as twm:
                loader = self.loader
                if allow_padding:
                    if pad_value not in self._padded:
                        self._padded[pad_value] = twm.WithDefault(self.loader, np.full(3, pad_value, dtype=np.int32))
                    loader = self._padded[pad_value]
                return loader.load(latlon=center, bearing=0.0, meters_per_pixel=size_m / px, shape=(px, px))
        except Exception as e:  # the compiled loader raises plain RuntimeErrors for missing/corrupt tiles
            raise CoverageError(f"{self.folder}: cannot render the view at ({center[0]:.6f}, {center[1]:.6f}), "
                                f"{size_m:g} m ({str(e).splitlines()[0]}); coverage {_fmt_bounds(self.coverage)}") from None


# ---- does the imagery suit a region? ---------------------------------------------------------------------
UPSAMPLE_TOLERANCE = 1.1  # views up to 10 % finer than the imagery are not worth a warning


def upsampled_levels(region: Region, source_mpp: float | None) -> list[tuple[int, float]]:
    """(level, factor) for each zoom level whose views need finer pixels than the imagery has."""
    if not source_mpp:
        return []
    out = []
    for lvl in range(region.steps):
        factor = source_mpp / region.meters_per_pixel(lvl)
        if factor > UPSAMPLE_TOLERANCE:
            out.append((lvl, float(factor)))
    return out


def coarse_imagery_warning(region: Region, source_mpp: float | None) -> str | None:
    """One line when some levels' views would be upsampled blur of the imagery, else None."""
    up = upsampled_levels(region, source_mpp)
    if not up:
        return None
    (first, _), (last, worst) = up[0], up[-1]
    levels = f"level {first}" if first == last else f"levels {first}-{last}"
    return (f"the imagery has {source_mpp:.2f} m/px but level {first} views need "
            f"{region.meters_per_pixel(first):.2f} m/px: {levels} will be upsampled (up to {worst:.1f}x, blurry); "
            f"use finer imagery or a larger region")


def fitting_region(source: ImagerySource) -> tuple[tuple[float, float], float] | None:
    """The centre and side (metres, a multiple of 10) of the largest square region around the middle of
    the imagery's coverage that it covers, or None when none is found."""
    s, n, w, e = source.coverage
    centre = ((s + n) / 2, (w + e) / 2)
    height = math.radians(n - s) * EARTH_RADIUS_M
    width = math.radians(e - w) * EARTH_RADIUS_M * math.cos(math.radians(centre[0]))
    size = math.floor(min(height, width) / 10) * 10
    while size >= 10:
        if source.covers(centre, size):
            return centre, float(size)
        size = math.floor(size * 0.97 / 10) * 10
    return None


def check_region_fits(source: ImagerySource, region: Region) -> None:
    """Refuse a region the imagery does not cover, naming a --center/--size-m that would fit."""
    if source.covers(region.center, region.size_m):
        return
    fit = fitting_region(source)
    hint = (f"; a region that fits: --center {fit[0][0]:.6f},{fit[0][1]:.6f} --size-m {fit[1]:g}" if fit
            else "; the imagery is too small for any region")
    raise CoverageError(f"the {region.size_m:g} m region at ({region.center_lat:.6f}, {region.center_lon:.6f}) is not "
                        f"inside the imagery {source.name} ({_fmt_bounds(source.coverage)}){hint}")


# ---- the factory ----------------------------------------------------------------------------------------------
def open_source(spec) -> ImagerySource:
    """An imagery source from a path: an XYZ folder or its layout.yaml, a GeoTIFF, or a folder holding one.

    An :class:`ImagerySource` is passed through unchanged.
    """
    if isinstance(spec, ImagerySource):
        return spec
    path = Path(spec)
    if not path.exists():
        raise ImageryError(f"{path}: no such imagery file or folder")
    if path.is_dir():
        if (path / "layout.yaml").is_file():
            return XYZSource(path)
        if (path / "satellite" / "layout.yaml").is_file():  # a dataset root in the authors' format
            return XYZSource(path / "satellite")
        tifs = sorted(path.glob("*.tif")) + sorted(path.glob("*.tiff"))
        if len(tifs) == 1:
            return GeoTiffSource(tifs[0])
        raise ImageryError(f"{path}: holds neither a layout.yaml nor exactly one GeoTIFF")
    if path.name.endswith((".yaml", ".yml")):
        return XYZSource(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return GeoTiffSource(path)
    raise ImageryError(f"{path}: unknown imagery format (expected an XYZ folder with layout.yaml or a GeoTIFF)")
