"""A synthetic cross-view world: satellite imagery, street photos and splits, deterministic by seed.

``jzi-synth OUT`` writes, in the authors' dataset format::

    OUT/world.json                          what was made (seed, region, sizes, raster bounds)
    OUT/world.tif                           the satellite raster as a GeoTIFF (EPSG:4326)
    OUT/satellite/layout.yaml, {z}/{x}/{y}.jpg   the same imagery as XYZ tiles (tiledwebmaps layout)
    OUT/streetview/images/{image_id}_undistorted.jpg
    OUT/metadata/{train,val,test}.csv       image_id, latitude, longitude, sequence (+ heading_deg, fov_deg)

The imagery has structure at every zoom scale, so each of the four zoom steps carries information:
each 2.5 km district (a level-0 cell) has its own ground palette; each 625 m neighbourhood (level 1)
its own street-grid angle and spacing, roof colour family and greenery; each 156 m block (level 2)
a land use (dense or sparse buildings, park, pond, plaza), its buildings' height and facade
pattern, and a paving brightness and colourfulness on its open ground and streets; below that,
single buildings, trees, shadows, plus a river and arterial roads across cells.

A street photo looks outward from the ground: the surroundings are projected onto a ground plane
seen from 2.5 m up (a perspective polar warp), buildings stand up as facades, the heading is random
and unknown, the field of view is a random crop, and poles, cars, colour, blur and JPEG changes are
added, so matching needs cross-view reasoning rather than a pixel copy.

numpy and OpenCV only (rasterio for the GeoTIFF), no torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from jzi.runtime.geometry import Region, move
from jzi.runtime.imagery import ArraySource, latlon_to_tile, tile_to_latlon, zoom_meters_per_pixel

SPLITS = ("train", "val", "test")
WORLD_FORMAT = "jzi-synthetic-world"
# name -> (train, val, test) queries
SIZES = {"tiny": (64, 16, 16), "small": (600, 100, 200), "default": (6000, 300, 1000)}
LAND_USES = ("dense", "sparse", "park", "pond", "plaza")
LAND_USE_P = (0.55, 0.25, 0.08, 0.04, 0.08)
BLOCK_HEIGHTS_M = (5.0, 12.0, 22.0, 40.0)  # building height by block column within a neighbourhood
BLOCK_GROUND_TONE = (0.62, 0.80, 0.98, 1.16)  # paving brightness by block column
BLOCK_GROUND_SATURATION = (0.35, 0.75, 1.15, 1.55)  # paving colourfulness by block row
WORLD_VERSION = 2  # 2: blocks show their code on the ground (block_ground); 1: on buildings only


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    region: dict = field(default_factory=lambda: Region.default().to_dict())
    meters_per_pixel: float = 2.5  # raster resolution (tiny views at level 3 are 2.44 m/px)
    margin_m: float = 600.0  # imagery beyond the region, so views and street photos near edges exist
    sizes: tuple = SIZES["default"]
    street_size: tuple = (128, 256)  # street photo H, W
    view_radius_m: float = 120.0  # how far a street photo sees
    fov_deg: tuple = (200.0, 360.0)  # random horizontal field of view of a street photo
    min_zoom: int = 8
    jpeg_quality: int = 90
    # Each block's open ground and streets carry its code (brightness by column, colourfulness by row),
    # so a street photo shows its block underfoot. False is version 1 of the world, where only buildings
    # did and 27 % of photos saw nothing of their own block (parks, ponds, plazas, edges; RESULTS.md).
    block_ground: bool = True
    # No poles or cars in front of the camera, and no exposure, white-balance, blur or noise changes
    # (the --easy world, with full panoramas)
    clean_camera: bool = False


def easy_config(cfg: WorldConfig) -> WorldConfig:
    """The --easy world: the same city, photographed as clean full panoramas (a named, easier option
    for quick demonstrations; the default world is the benchmark)."""
    return replace(cfg, fov_deg=(360.0, 360.0), clean_camera=True)


# ---- small procedural helpers ----------------------------------------------------------------------
def _hash01(*ints) -> np.ndarray:
    """A deterministic pseudo-random float in [0, 1) per element of integer arrays (vectorised)."""
    h = np.uint64(1469598103934665603)
    for k, a in enumerate(ints):
        a = np.asarray(a).astype(np.int64).astype(np.uint64)
        h = (h ^ (a + np.uint64(0x9E3779B97F4A7C15 + k))) * np.uint64(1099511628211)
        h ^= h >> np.uint64(29)
    h = (h * np.uint64(0xBF58476D1CE4E5B9)) ^ (h >> np.uint64(31))
    return (h >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def _fractal_noise(rng, shape, span_m, wavelengths_m, amps) -> np.ndarray:
    """Sum of smooth random fields (cubic upsampled grids), one per wavelength; float32 [H, W]."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for lam, amp in zip(wavelengths_m, amps):
        n = max(2, int(math.ceil(span_m / lam)) + 2)
        grid = rng.standard_normal((n, n)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV (all in 0..1) -> RGB float [..., 3]."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h)
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)


# ---- the world -----------------------------------------------------------------------------------------
class World:
    """The satellite raster of a synthetic region (lat/lon grid), its building heights, and attributes."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.region = Region.from_dict(cfg.region)
        r = self.region
        self.span_m = r.size_m + 2 * cfg.margin_m
        self.px = int(round(self.span_m / cfg.meters_per_pixel))
        half = self.span_m / 2
        c = r.center
        self.bounds = (float(move(c, 0.0, -half)[0]), float(move(c, 0.0, half)[0]),
                       float(move(c, 90.0, -half)[1]), float(move(c, 90.0, half)[1]))
        self.image, self.height, self.pattern, self.water = self._paint()
        self.source = ArraySource(self.image, self.bounds)

    # coordinates: x east from the region's west edge, y south from its north edge (metres)
    def _axes(self):
        mpp = self.span_m / self.px
        a = (np.arange(self.px, dtype=np.float32) + 0.5) * mpp - self.cfg.margin_m
        return a, a  # x per column, y per row

    def _paint(self):
        """Paint the raster band by band (bounded memory) -> RGB, building height (m), building pattern, water."""
        cfg, r = self.cfg, self.region
        rng = np.random.default_rng(cfg.seed)
        n = self.px
        xs, ys = self._axes()
        s1, s2, s3 = (r.level_size_m(lvl) for lvl in (1, 2, 3))
        g = r.grid
        # district ground hues: a random permutation of 16 well-separated hues (random outside the region)
        k0 = int(math.ceil(cfg.margin_m / s1))
        m0 = g + 2 * k0
        t = {"hue0": rng.random((m0, m0))}
        t["hue0"][k0:k0 + g, k0:k0 + g] = ((rng.permutation(g * g) + 0.5) / (g * g)).reshape(g, g)
        # neighbourhood and block tables (indexed by cell, margin included)
        k1, k2 = int(math.ceil(cfg.margin_m / s2)), int(math.ceil(cfg.margin_m / s3))
        m1, m2 = int(round(r.size_m / s2)) + 2 * k1, int(round(r.size_m / s3)) + 2 * k2
        t["angle1"] = rng.uniform(0, math.pi / 2, (m1, m1))
        t["spacing1"] = rng.choice([45.0, 60.0, 80.0], (m1, m1))
        t["roadw1"] = rng.uniform(6.0, 10.0, (m1, m1))
        t["green1"] = rng.uniform(-0.5, 0.1, (m1, m1))
        t["use2"] = rng.choice(len(LAND_USES), (m2, m2), p=LAND_USE_P)
        t["pond2"] = rng.uniform(0.25, 0.42, (m2, m2, 2))
        t["phase"] = rng.uniform(0, 2 * math.pi, 2)
        t["river"] = (0.3 + 0.4 * rng.random()) * r.size_m
        t["k"] = (k0, k1, k2)
        noise = _fractal_noise(rng, (n, n), self.span_m, (1500, 300, 60, 12), (0.05, 0.05, 0.04, 0.03))
        tree_noise = _fractal_noise(rng, (n, n), self.span_m, (40, 10), (0.6, 0.5))
        image = np.empty((n, n, 3), np.uint8)
        height = np.zeros((n, n), np.uint8)
        pattern = np.zeros((n, n), np.uint8)
        water = np.zeros((n, n), bool)
        band = 512
        for r0 in range(0, n, band):
            rows = slice(r0, min(n, r0 + band))
            image[rows], height[rows], pattern[rows], water[rows] = self._paint_band(xs, ys[rows], t, noise[rows],
                                                                                    tree_noise[rows])
        return image, height, pattern, water

    def _paint_band(self, xs, ys, t, noise, tree_noise):
        cfg, r = self.cfg, self.region
        s1, s2, s3 = (r.level_size_m(lvl) for lvl in (1, 2, 3))
        k0, k1, k2 = t["k"]
        g = r.grid
        x = np.broadcast_to(xs[None, :], (len(ys), len(xs)))
        y = np.broadcast_to(ys[:, None], (len(ys), len(xs)))

        def cell(size, k):  # (row, col) table indices of each pixel's cell at one level
            return np.floor(ys / size).astype(np.int64)[:, None] + k, np.floor(xs / size).astype(np.int64)[None, :] + k

        r0, c0 = cell(s1, k0)
        r1, c1 = cell(s2, k1)
        r2, c2 = cell(s3, k2)
        # the child index of each pixel's neighbourhood (in its district) and block (in its neighbourhood)
        a1 = ((r1 - k1) % g) * g + (c1 - k1) % g
        a2_row, a2_col = (r2 - k2) % g, (c2 - k2) % g

        # districts: a pale ground in the district's hue
        ground = _hsv_to_rgb(t["hue0"][r0, c0] + 0.15 * noise, 0.42 + noise, np.clip(0.68 + noise, 0, 1))
        use = t["use2"][r2, c2]
        park = use == LAND_USES.index("park")
        plaza = use == LAND_USES.index("plaza")
        ground[plaza] = 0.5 * ground[plaza] + 0.5 * np.array([0.8, 0.78, 0.74], np.float32)
        img = ground
        trees = tree_noise > (0.95 - t["green1"][r1, c1] - 0.6 * park)

        # water: block ponds and a river
        fy = (ys[:, None] - (r2 - k2) * s3) / s3 - 0.5
        fx = (xs[None, :] - (c2 - k2) * s3) / s3 - 0.5
        pr = t["pond2"][r2, c2]
        water = (use == LAND_USES.index("pond")) & ((fx / pr[..., 0]) ** 2 + (fy / pr[..., 1]) ** 2 < 1)
        river_y = t["river"] + 900 * np.sin(2 * math.pi * xs / 7300 + t["phase"][0]) \
            + 250 * np.sin(2 * math.pi * xs / 2100 + t["phase"][1])
        water |= np.abs(y - river_y[None, :]) < 35 + 12 * noise / 0.05

        # streets: a rotated grid per neighbourhood, arterials on neighbourhood edges, highways on districts
        th, sp, rw = t["angle1"][r1, c1], t["spacing1"][r1, c1], t["roadw1"][r1, c1]
        u = x * np.cos(th) + y * np.sin(th)
        v = -x * np.sin(th) + y * np.cos(th)
        fu, fv = np.mod(u, sp), np.mod(v, sp)
        street = (fu < rw) | (fv < rw)

        def near_edge(size, width):
            return (np.abs((xs[None, :] + size / 2) % size - size / 2) < width) | \
                (np.abs((ys[:, None] + size / 2) % size - size / 2) < width)

        edge1, edge0 = near_edge(s2, 9), near_edge(s1, 16)

        # buildings: one or four per street block. Neighbourhoods are told apart by roof hue, blocks by
        # building height (block column) and roof/facade pattern (block row): visible from above and
        # from the street alike.
        bu, bv = np.floor(u / sp).astype(np.int64), np.floor(v / sp).astype(np.int64)
        hsh = _hash01(r1 * 1000 + c1, bu, bv, cfg.seed)
        inner_u, inner_v = (fu - rw) / (sp - rw), (fv - rw) / (sp - rw)
        frac = 0.72 + 0.15 * (hsh - 0.5)
        lo, hi = 0.5 - frac / 2, 0.5 + frac / 2
        in_box = (inner_u > lo) & (inner_u < hi) & (inner_v > lo) & (inner_v < hi)
        gap = (hsh > 0.5) & ((np.abs(inner_u - 0.5) < 0.04) | (np.abs(inner_v - 0.5) < 0.04))
        built = (use == LAND_USES.index("dense")) | ((use == LAND_USES.index("sparse")) & (hsh < 0.8))
        building = built & in_box & ~gap & ~street & ~water
        quad = (inner_u > 0.5).astype(np.int64) * 2 + (inner_v > 0.5)
        bh = _hash01(r1 * 1000 + c1, bu, bv, quad, cfg.seed + 1)
        roof = _hsv_to_rgb((a1 + 0.5) / (g * g) + 0.01 * (bh - 0.5), 0.8 + 0.1 * (bh - 0.5), 0.85 + 0.1 * (bh - 0.5))
        pat = a2_row.astype(np.uint8)
        period = 8.0  # metres, roof stripes seen from above
        on_x = np.mod(x, period) < period / 2
        on_y = np.mod(y, period) < period / 2
        dark = np.where(pat == 1, on_y, np.where(pat == 2, on_x, np.where(pat == 3, on_x ^ on_y, False)))
        roof = roof * np.where(dark, 0.62, 1.0)[..., None]
        levels = np.array(BLOCK_HEIGHTS_M, np.float32)
        height = np.where(building, levels[a2_col] * (0.9 + 0.2 * bh), 0)

        tree_col = np.array([0.16, 0.33, 0.13], np.float32) * (1 + 0.3 * tree_noise[..., None])
        # district streets are paved in a darker shade of the district's ground (a cue seen from any street)
        road_col = 0.45 * ground + 0.55 * np.array([0.33, 0.33, 0.35], np.float32)
        img = np.where((trees & ~street)[..., None], tree_col, img)
        img = np.where((street & ~plaza & ~park)[..., None], road_col + 0.5 * noise[..., None], img)
        img = np.where((edge1 | edge0)[..., None], np.array([0.26, 0.26, 0.28], np.float32), img)
        img = np.where(water[..., None], np.array([0.12, 0.27, 0.42], np.float32) + 0.6 * noise[..., None], img)
        # shadows fall north-east of each building, longer for taller ones (sun in the south-west)
        mpp = self.span_m / self.px
        shadow = np.zeros_like(building)
        for h_m in BLOCK_HEIGHTS_M:
            shift = max(1, int(round(0.5 * h_m / mpp)))
            tall = building & (height >= h_m * 0.85)
            shadow[:-shift, shift:] |= tall[shift:, :-shift]
        if cfg.block_ground:
            paving = ~(trees | water | edge1 | edge0 | building)
            img = np.where(paving[..., None], self._pave(img, a2_row, a2_col), img)
        img = np.where((shadow & ~building)[..., None], img * 0.55, img)
        img = np.where(building[..., None], roof, img)
        img = np.clip(img * (1 + noise[..., None]), 0, 1)
        return (img * 255 + 0.5).astype(np.uint8), np.clip(height, 0, 255).astype(np.uint8), \
            np.where(building, pat, 0).astype(np.uint8), water

    @staticmethod
    def _pave(img, block_row, block_col) -> np.ndarray:
        """A block's paving: its colourfulness by block row and its brightness by block column (the
        ground keeps its district's hue). Large, flat cues: a photo sees them underfoot from any heading."""
        grey = img.mean(axis=-1, keepdims=True)
        sat = np.array(BLOCK_GROUND_SATURATION, np.float32)[block_row][..., None]
        tone = np.array(BLOCK_GROUND_TONE, np.float32)[block_col][..., None]
        return (grey + (img - grey) * sat) * tone

    # ---- street photos -------------------------------------------------------------------------------
    def latlon_to_pixel(self, latlon):
        s, n, w, e = self.bounds
        latlon = np.asarray(latlon, dtype=np.float64)
        return ((n - latlon[..., 0]) / (n - s) * self.px - 0.5, (latlon[..., 1] - w) / (e - w) * self.px - 0.5)

    def street_photo(self, latlon, heading_deg: float, fov_deg: float, rng: np.random.Generator) -> np.ndarray:
        """Render a street-level photo (uint8 RGB [H, W, 3]) at ``latlon`` looking around ``heading_deg``."""
        cfg = self.cfg
        H, W = cfg.street_size
        mpp = self.span_m / self.px
        row0, col0 = self.latlon_to_pixel(latlon)
        horizon = int(H * rng.uniform(0.42, 0.5))
        cam_h = 2.5
        az = np.radians(heading_deg - fov_deg / 2 + fov_deg * (np.arange(W) + 0.5) / W)
        sin_a, cos_a = np.sin(az)[None, :], np.cos(az)[None, :]

        # ground below the horizon: a row at depression angle d sees the ground at cam_h / tan(d)
        dep = np.radians(0.3 + 55.0 * (np.arange(H - horizon) + 0.5) / (H - horizon))[:, None]
        dist = np.minimum(cam_h / np.tan(dep), cfg.view_radius_m)
        rows = (row0 - dist * cos_a / mpp).astype(np.float32)
        cols = (col0 + dist * sin_a / mpp).astype(np.float32)
        ground = cv2.remap(self.image, cols, rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        haze = np.clip(dist / cfg.view_radius_m, 0, 1)[..., None] ** 2 * 0.5
        sky_col = np.array([rng.uniform(150, 200), rng.uniform(175, 215), rng.uniform(205, 245)], np.float32)
        ground = ground * (1 - haze) + sky_col * 0.8 * haze

        # sky above the horizon, brighter towards the top
        t = (np.arange(horizon, dtype=np.float32) / max(horizon, 1))[:, None, None]
        sky = np.broadcast_to(sky_col * (1.05 - 0.25 * t), (horizon, W, 3))
        photo = np.concatenate([sky, ground], axis=0).astype(np.float32)

        # facades: march each column outward; the first building met stands up from its base row
        radii = np.geomspace(3.0, cfg.view_radius_m, 64)[:, None]
        hr = np.clip(np.round(row0 - radii * cos_a / mpp), 0, self.px - 1).astype(np.int64)
        hc = np.clip(np.round(col0 + radii * sin_a / mpp), 0, self.px - 1).astype(np.int64)
        heights = self.height[hr, hc].astype(np.float32)
        hit = heights > 0
        first = np.argmax(hit, axis=0)
        has = hit.any(axis=0)
        cols_idx = np.arange(W)
        d = radii[first, 0]
        bh = heights[first, cols_idx]
        hit_r, hit_c = hr[first, cols_idx], hc[first, cols_idx]
        smooth = self.source._level(1)  # roof colour without the stripes seen from above
        colour = smooth[hit_r // 2, hit_c // 2].astype(np.float32) * 0.85
        pat = self.pattern[hit_r, hit_c]
        base = horizon + (np.degrees(np.arctan(cam_h / d)) - 0.3) / 55.0 * (H - horizon)
        top = horizon - np.degrees(np.arctan((bh - cam_h) / d)) / 45.0 * horizon
        rr = np.arange(H, dtype=np.float32)[:, None]
        facade = has[None, :] & (rr >= top[None, :]) & (rr <= base[None, :])
        # the facade shows the building's pattern (plain, horizontal, vertical or checker bands)
        on_r = np.mod(rr, 8) < 4
        on_c = (np.mod(np.arange(W), 8) < 4)[None, :]
        dark = np.where(pat == 1, on_r, np.where(pat == 2, on_c, np.where(pat == 3, on_r ^ on_c, False)))
        shade = np.where(dark, 0.6, 1.0)
        photo = np.where(facade[..., None], colour[None, :, :] * shade[..., None], photo)

        if cfg.clean_camera:
            return np.clip(photo, 0, 255).astype(np.uint8)
        # occluders: poles and cars
        for _ in range(rng.integers(0, 4)):
            c, w = int(rng.integers(0, W)), int(rng.integers(2, 5))
            photo[int(H * rng.uniform(0.05, 0.4)):, c:c + w] = rng.uniform(20, 70)
        for _ in range(rng.integers(0, 3)):
            c, w = int(rng.integers(0, W)), int(rng.integers(20, 50))
            top_r = int(H * rng.uniform(0.62, 0.8))
            photo[top_r:min(H, top_r + w // 2), c:c + w] = rng.uniform(30, 230, 3)
        # camera: exposure, contrast, a slight white-balance shift, blur, noise
        photo = (photo - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-15, 15)
        photo = photo * rng.uniform(0.94, 1.06, 3)
        sigma = rng.uniform(0.0, 1.2)
        if sigma > 0.3:
            photo = cv2.GaussianBlur(photo, (0, 0), sigma)
        photo = photo + rng.normal(0, 3, photo.shape)
        return np.clip(photo, 0, 255).astype(np.uint8)

    def sample_positions(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform positions inside the region, off water and buildings (photos are taken outdoors)."""
        out = [np.empty((0, 2))]  # a split may be empty
        s, n, w, e = self.region.bounds_latlon()
        while sum(len(o) for o in out) < count:
            lat = rng.uniform(s, n, count)
            lon = rng.uniform(w, e, count)
            ll = np.stack([lat, lon], -1)
            rr, cc = self.latlon_to_pixel(ll)
            rows = np.clip(np.round(rr).astype(int), 0, self.px - 1)
            cols = np.clip(np.round(cc).astype(int), 0, self.px - 1)
            out.append(ll[~self.water[rows, cols] & (self.height[rows, cols] == 0)])
        return np.concatenate(out)[:count]


# ---- writing the dataset ---------------------------------------------------------------------------------
def write_geotiff(world: World, path: Path) -> None:
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    s, n, w, e = world.bounds
    # the pixel grid written out directly: rasterio's from_bounds builds it with a deprecated operator
    transform = Affine((e - w) / world.px, 0.0, w, 0.0, -(n - s) / world.px, n)
    profile = dict(driver="GTiff", width=world.px, height=world.px, count=3, dtype="uint8", crs="EPSG:4326",
                   transform=transform, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", predictor=2)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(world.image, -1, 0))
        ds.build_overviews([2, 4, 8, 16, 32], Resampling.average)


def write_xyz(world: World, folder: Path, quality: int) -> int:
    """XYZ tiles from ``min_zoom`` up to the first zoom at least as fine as the raster; returns the count.

    Tiles reaching beyond the raster are black there, so ``layout.yaml`` records the raster's bounds as
    ``coverage`` (a jzi key that tiledwebmaps ignores).
    """
    s, n, w, e = world.bounds
    lat_c = (s + n) / 2
    mpp = world.span_m / world.px
    max_zoom = next(z for z in range(world.cfg.min_zoom, 23) if zoom_meters_per_pixel(z, lat_c) <= mpp)
    count = 0
    for z in range(world.cfg.min_zoom, max_zoom + 1):
        (x0, y0), (x1, y1) = latlon_to_tile([n, w], z), latlon_to_tile([s, e], z)
        xr, yr = range(int(x0), int(x1) + 1), range(int(y0), int(y1) + 1)
        grid = (np.arange(256) + 0.5) / 256
        tile_mpp = zoom_meters_per_pixel(z, lat_c)
        for tx in xr:
            for ty in yr:
                ll = tile_to_latlon(np.stack(np.meshgrid(tx + grid, ty + grid), -1), z)
                tile = world.source.sample(ll, tile_mpp)
                out = folder / str(z) / str(tx) / f"{ty}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
                count += 1
    (folder / "layout.yaml").write_text(f"preset: XYZ\nmin_zoom: {world.cfg.min_zoom}\nmax_zoom: {max_zoom}\n"
                                        f"coverage: [{s!r}, {n!r}, {w!r}, {e!r}]  # south, north, west, east\n")
    return count


def format_sequence(path) -> str:
    return "[" + ", ".join(str(int(a)) for a in path) + "]"


def write_split(world: World, root: Path, split: str, count: int, seed: int, progress: bool) -> None:
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])
    positions = world.sample_positions(count, rng)
    paths = world.region.ground_truth_path(positions)
    images = root / "streetview" / "images"
    rows = []
    it = range(count)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"street photos ({split})", unit="img", leave=False)
    for i in it:
        heading = float(rng.uniform(0, 360))
        fov = float(rng.uniform(*world.cfg.fov_deg))
        photo = world.street_photo(positions[i], heading, fov, rng)
        image_id = f"{split}_{i:06d}"
        quality = int(rng.integers(85, 96))
        cv2.imwrite(str(images / f"{image_id}_undistorted.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
        rows.append([image_id, f"{positions[i, 0]:.8f}", f"{positions[i, 1]:.8f}", format_sequence(paths[i]),
                     f"{heading:.1f}", f"{fov:.1f}"])
    with open(root / "metadata" / f"{split}.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image_id", "latitude", "longitude", "sequence", "heading_deg", "fov_deg"])
        wr.writerows(rows)


def make_world(out, cfg: WorldConfig = WorldConfig(), overwrite: bool = False, progress: bool = False,
               log=print) -> dict:
    """Generate the world and its splits into ``out`` (built beside it, moved into place at the end)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        world = World(cfg)
        log(f"raster {world.px}x{world.px} px at {cfg.meters_per_pixel:g} m/px in {time.perf_counter() - t0:.1f} s")
        write_geotiff(world, tmp / "world.tif")
        n_tiles = write_xyz(world, tmp / "satellite", cfg.jpeg_quality)
        log(f"GeoTIFF and {n_tiles} XYZ tiles written ({time.perf_counter() - t0:.1f} s)")
        (tmp / "streetview" / "images").mkdir(parents=True)
        (tmp / "metadata").mkdir()
        for split, count in zip(SPLITS, cfg.sizes):
            write_split(world, tmp, split, count, cfg.seed, progress)
        version = WORLD_VERSION if cfg.block_ground else 1
        info = {"format": WORLD_FORMAT, "version": version, "config": asdict(cfg), "raster_px": world.px,
                "raster_bounds": dict(zip(("south", "north", "west", "east"), world.bounds)),
                "splits": dict(zip(SPLITS, cfg.sizes)), "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "world.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        log(f"synthetic world written to {out} in {info['seconds']} s "
            f"({', '.join(f'{k} {v}' for k, v in info['splits'].items())})")
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jzi-synth", description="Make a synthetic cross-view world and its "
                                "train/val/test splits in the authors' dataset format.")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed makes the same world (default 0)")
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="queries per split: " + "; ".join(f"{k} {v}" for k, v in SIZES.items()))
    p.add_argument("--train", type=int, help="train queries (overrides --size)")
    p.add_argument("--val", type=int, help="val queries (overrides --size)")
    p.add_argument("--test", type=int, help="test queries (overrides --size)")
    p.add_argument("--meters-per-pixel", type=float, default=WorldConfig.meters_per_pixel,
                   help="satellite raster resolution (default %(default)s)")
    p.add_argument("--buildings-only", action="store_true",
                   help="version 1 of the world: blocks show their code on buildings only, not on their paving")
    p.add_argument("--easy", action="store_true", help="an easier world for quick demonstrations: full "
                   "panoramas, no occluders, no camera changes (the default world is the benchmark)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    sizes = list(SIZES[a.size])
    for i, v in enumerate((a.train, a.val, a.test)):
        if v is not None:
            if v < 0:
                p.error("split sizes must be >= 0")
            sizes[i] = v
    if not 0.25 <= a.meters_per_pixel <= 20:
        p.error("--meters-per-pixel must be within 0.25 .. 20")
    cfg = WorldConfig(seed=a.seed, sizes=tuple(sizes), meters_per_pixel=a.meters_per_pixel,
                      block_ground=not a.buildings_only)
    if a.easy:
        cfg = easy_config(cfg)
    try:
        make_world(a.out, cfg, overwrite=a.overwrite, progress=not a.quiet,
                   log=(lambda *_: None) if a.quiet else print)
    except (FileExistsError, OSError) as e:
        print(f"jzi-synth: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
