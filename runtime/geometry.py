"""Zoom geometry: regions, cells, great-circle moves, distances, tile indexing.

Pure numpy, vectorised over any leading batch shape. This is the single source of
truth for turning actions into places; the export side imports it from here.

Conventions (DESIGN §2):
- A view at level l is a north-up square of side ``s_l`` metres; ``s_{l+1} = s_l / grid``.
- Action index = row * grid + col; row 0 is north, col 0 is west.
- Moves are great-circle destination points on a sphere of radius 6 378 137 m: first
  east (bearing 90) by the east offset, then north (bearing 0) by the north offset.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

EARTH_RADIUS_M = 6378137.0

# The authors' Washington DC region: origin, and bounds in metres around it.
DC_ORIGIN = (38.8936, -77.0116)
DC_BOUNDS_M = (-3000.0, 7000.0, -5000.0, 5000.0)  # east_min, east_max, north_min, north_max


def move(latlon, bearing_deg, distance_m) -> np.ndarray:
    """Great-circle destination of ``latlon`` [..., 2] (degrees) after ``distance_m`` along a bearing."""
    latlon = np.asarray(latlon, dtype=np.float64)
    lat1 = np.radians(latlon[..., 0])
    lon1 = np.radians(latlon[..., 1])
    brg = np.radians(np.asarray(bearing_deg, dtype=np.float64))
    ang = np.asarray(distance_m, dtype=np.float64) / EARTH_RADIUS_M
    lat2 = np.arcsin(np.sin(lat1) * np.cos(ang) + np.cos(lat1) * np.sin(ang) * np.cos(brg))
    lon2 = lon1 + np.arctan2(np.sin(brg) * np.sin(ang) * np.cos(lat1), np.cos(ang) - np.sin(lat1) * np.sin(lat2))
    lon2 = (lon2 + np.pi) % (2 * np.pi) - np.pi  # wrap into [-pi, pi)
    return np.stack([np.degrees(lat2), np.degrees(lon2)], axis=-1)


def move_en(latlon, east_m, north_m) -> np.ndarray:
    """Move east (bearing 90) then north (bearing 0), as the authors step between cells."""
    return move(move(latlon, 90.0, east_m), 0.0, north_m)


def distance_m(latlon1, latlon2) -> np.ndarray:
    """Haversine distance in metres on the 6 378 137 m sphere (the authors' formula)."""
    a1 = np.radians(np.asarray(latlon1, dtype=np.float64))
    a2 = np.radians(np.asarray(latlon2, dtype=np.float64))
    h = np.sin((a1[..., 0] - a2[..., 0]) / 2) ** 2 + np.cos(a1[..., 0]) * np.cos(a2[..., 0]) * np.sin(
        (a1[..., 1] - a2[..., 1]) / 2
    ) ** 2
    return 2 * EARTH_RADIUS_M * np.arctan2(np.sqrt(h), np.sqrt(1 - h))


@dataclass(frozen=True)
class Region:
    """The level-0 square and the zoom grid over it."""

    center_lat: float
    center_lon: float
    size_m: float = 10000.0
    grid: int = 4
    steps: int = 4
    view_px: int = 384

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_bounds(cls, origin_latlon: Sequence[float], bounds_m: Sequence[float], **kw) -> "Region":
        """The authors' definition: an origin and (east_min, east_max, north_min, north_max) metres.

        The square's side is the east extent; its centre is the bounds' centre reached by moves.
        """
        e0, e1, n0, n1 = (float(b) for b in bounds_m)
        c = move_en(np.asarray(origin_latlon, dtype=np.float64), (e0 + e1) / 2, (n0 + n1) / 2)
        return cls(float(c[0]), float(c[1]), size_m=e1 - e0, **kw)

    @classmethod
    def default(cls) -> "Region":
        """The authors' 10 km Washington DC square, 4 steps of a 4x4 grid."""
        return cls.from_bounds(DC_ORIGIN, DC_BOUNDS_M)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Region":
        fields = ("center_lat", "center_lon", "size_m", "grid", "steps", "view_px")
        missing = [f for f in fields[:2] if f not in d]
        if missing:
            raise ValueError(f"region is missing {missing}")
        return cls(**{k: d[k] for k in fields if k in d})

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def center(self) -> np.ndarray:
        return np.array([self.center_lat, self.center_lon], dtype=np.float64)

    @property
    def n_actions(self) -> int:
        return self.grid * self.grid

    def level_size_m(self, level) -> np.ndarray | float:
        """Side of a view at ``level`` (0 = the whole region)."""
        return self.size_m / np.power(float(self.grid), level)

    def meters_per_pixel(self, level) -> np.ndarray | float:
        return self.level_size_m(level) / self.view_px

    @property
    def cell_size_m(self) -> float:
        """Side of the final cell after all steps (39.0625 m for the default region)."""
        return float(self.level_size_m(self.steps))

    def bounds_latlon(self) -> tuple[float, float, float, float]:
        """(south, north, west, east) of the level-0 square, built with the same moves."""
        s, n, w, e = square_bounds(self.center, self.size_m)
        return float(s), float(n), float(w), float(e)

    # ---- actions and paths --------------------------------------------------------------------
    def child_center(self, center, size_m, action) -> np.ndarray:
        """Centre of child ``action`` of the square (``center``, ``size_m``); vectorised."""
        action = np.asarray(action)
        row, col = np.divmod(action, self.grid)
        cell = np.asarray(size_m, dtype=np.float64) / self.grid
        east = (col + 0.5) * cell - np.asarray(size_m) / 2
        north = -((row + 0.5) * cell - np.asarray(size_m) / 2)
        return move_en(center, east, north)

    def view_centers(self, path) -> np.ndarray:
        """Centres of the views along ``path`` [..., k]: [..., k+1, 2] (level 0 .. k)."""
        path = np.asarray(path, dtype=np.int64)
        batch = path.shape[:-1]
        c = np.broadcast_to(self.center, batch + (2,)).astype(np.float64)
        out = [c]
        for lvl in range(path.shape[-1]):
            c = self.child_center(c, self.level_size_m(lvl), path[..., lvl])
            out.append(c)
        return np.stack(out, axis=-2)

    def path_center(self, path) -> np.ndarray:
        """Centre of the cell reached by ``path`` [..., k]: [..., 2]."""
        return self.view_centers(path)[..., -1, :]

    def ground_truth_path(self, latlon, steps: int | None = None) -> np.ndarray:
        """The true action path of positions ``latlon`` [..., 2] -> int64 [..., steps].

        At each level the position's fraction inside the current square (bounds built with
        the same moves, linear in lat/lon) gives row = int(frac_from_north * grid) and
        col = int(frac_from_west * grid), clamped to the grid, then the square recentres.
        """
        steps = self.steps if steps is None else steps
        latlon = np.asarray(latlon, dtype=np.float64)
        c = np.broadcast_to(self.center, latlon.shape).astype(np.float64)
        actions = []
        for lvl in range(steps):
            size = self.level_size_m(lvl)
            south, north, west, east = square_bounds(c, size)
            f_north = (north - latlon[..., 0]) / (north - south)
            f_west = (latlon[..., 1] - west) / (east - west)
            row = np.clip(np.floor(f_north * self.grid), 0, self.grid - 1).astype(np.int64)
            col = np.clip(np.floor(f_west * self.grid), 0, self.grid - 1).astype(np.int64)
            a = row * self.grid + col
            actions.append(a)
            c = self.child_center(c, size, a)
        return np.stack(actions, axis=-1)

    def contains(self, latlon) -> np.ndarray:
        """Whether positions lie inside the level-0 square."""
        latlon = np.asarray(latlon, dtype=np.float64)
        s, n, w, e = self.bounds_latlon()
        return (latlon[..., 0] >= s) & (latlon[..., 0] <= n) & (latlon[..., 1] >= w) & (latlon[..., 1] <= e)

    # ---- tile-store indexing --------------------------------------------------------------------
    # Views are numbered level by level; within a level a path is a base-(grid^2) number, so
    # the children of a cell are contiguous rows: children(i) = i*A .. i*A + A-1.
    def n_views(self, level: int) -> int:
        return self.n_actions**level

    def level_offset(self, level: int) -> int:
        return sum(self.n_actions**l for l in range(level))

    @property
    def total_views(self) -> int:
        """Views of levels 0 .. steps-1 (1 + 16 + 256 + 4096 = 4369 by default)."""
        return self.level_offset(self.steps)

    def path_index(self, path) -> np.ndarray:
        """Index within its level of the view reached by ``path`` [..., k]."""
        path = np.asarray(path, dtype=np.int64)
        idx = np.zeros(path.shape[:-1], dtype=np.int64)
        for lvl in range(path.shape[-1]):
            idx = idx * self.n_actions + path[..., lvl]
        return idx

    def index_path(self, level: int, index) -> np.ndarray:
        """Inverse of :meth:`path_index`: the path [..., level] of a view index at ``level``."""
        index = np.asarray(index, dtype=np.int64)
        out = np.zeros(index.shape + (level,), dtype=np.int64)
        for lvl in range(level - 1, -1, -1):
            index, out[..., lvl] = np.divmod(index, self.n_actions)
        return out


def square_bounds(center, size_m):
    """(south, north, west, east) of a north-up square, each edge reached by a move from the centre."""
    center = np.asarray(center, dtype=np.float64)
    half = np.asarray(size_m, dtype=np.float64) / 2
    north = move(center, 0.0, half)[..., 0]
    south = move(center, 0.0, -half)[..., 0]
    east = move(center, 90.0, half)[..., 1]
    west = move(center, 90.0, -half)[..., 1]
    return south, north, west, east
