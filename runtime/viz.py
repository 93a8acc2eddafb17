"""Draw a zoom path as the authors' project page shows it: the query photo, then one panel per
step with the view, its grid, the chosen cell and, when known, the true position.

OpenCV only (the runtime's own dependency), so a Jetson can draw too.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .geometry import Region, square_bounds

PANEL = 256  # panel height in pixels
CHOSEN = (255, 210, 0)  # RGB
GRID = (255, 255, 255)
TRUTH = (255, 40, 40)
TEXT = (20, 20, 20)


def view_images(region: Region, path, store=None, source=None) -> list[np.ndarray]:
    """The views along ``path`` (levels 0 .. steps-1): the store's thumbnails, else rendered from ``source``."""
    path = [int(a) for a in path]
    if store is not None and store.pixels is not None:
        return [store.view_pixels(path[:lvl]) for lvl in range(region.steps)]
    if source is None:
        raise ValueError("drawing the zoom path needs view pixels: build the store with --thumbs PX, or pass --source")
    centres = region.view_centers(path)
    return [source.render(centres[lvl], float(region.level_size_m(lvl)), region.view_px, allow_padding=True)
            for lvl in range(region.steps)]


def truth_pixel(region: Region, centre, level: int, truth, px: int):
    """(x, y) of ``truth`` inside the view at ``level`` centred on ``centre``, or None when outside it."""
    south, north, west, east = square_bounds(centre, region.level_size_m(level))
    fx = (truth[1] - west) / (east - west)
    fy = (north - truth[0]) / (north - south)
    if not (0 <= fx <= 1 and 0 <= fy <= 1):
        return None
    return int(round(fx * px)), int(round(fy * px))


def _label(img: np.ndarray, text: str, y: int) -> None:
    cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1, cv2.LINE_AA)


def draw_zoom(photo: np.ndarray, views: list[np.ndarray], region: Region, path, step_probs=None, truth=None,
              caption: str | None = None) -> np.ndarray:
    """One RGB picture: photo | view 0 | view 1 | ... with grids, chosen cells and the truth marker."""
    path = [int(a) for a in path]
    g, h = region.grid, PANEL
    centres = region.view_centers(path)
    ph, pw = photo.shape[:2]
    photo_w = min(2 * h, max(1, int(round(pw * h / ph))))
    panels = [cv2.resize(photo, (photo_w, h), interpolation=cv2.INTER_AREA)]
    titles = ["query"]
    for lvl, view in enumerate(views):
        panel = cv2.resize(view, (h, h), interpolation=cv2.INTER_LINEAR if view.shape[0] < h else cv2.INTER_AREA)
        cell = h / g
        for i in range(1, g):
            c = int(round(i * cell))
            cv2.line(panel, (c, 0), (c, h - 1), GRID, 1)
            cv2.line(panel, (0, c), (h - 1, c), GRID, 1)
        row, col = divmod(path[lvl], g)
        x0, y0 = int(round(col * cell)), int(round(row * cell))
        cv2.rectangle(panel, (x0, y0), (int(round(x0 + cell)) - 1, int(round(y0 + cell)) - 1), CHOSEN, 3)
        if truth is not None:
            xy = truth_pixel(region, centres[lvl], lvl, truth, h)
            if xy is not None:
                cv2.circle(panel, xy, 6, TRUTH, 2, cv2.LINE_AA)
                cv2.drawMarker(panel, xy, TRUTH, cv2.MARKER_CROSS, 8, 2)
        prob = f" p={step_probs[lvl]:.2f}" if step_probs is not None else ""
        titles.append(f"level {lvl}: {region.level_size_m(lvl):g} m, cell {path[lvl]}{prob}")
        panels.append(panel)
    gap = 8
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) + 1)
    canvas = np.full((h + 60, width, 3), 255, np.uint8)
    x = gap
    for panel, title in zip(panels, titles):
        canvas[28:28 + h, x:x + panel.shape[1]] = panel
        sub = canvas[:, x:x + panel.shape[1]]
        _label(sub, title, 18)
        x += panel.shape[1] + gap
    if caption:
        _label(canvas, caption, h + 50)
    return canvas


def save_rgb(path, rgb: np.ndarray) -> Path:
    """Write an RGB picture atomically (a temp name beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write a picture with this extension (use .png or .jpg)")
    os.replace(tmp, path)
    return path
