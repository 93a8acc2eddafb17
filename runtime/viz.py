"""Draw a zoom path as the authors' project page shows it: the query photo, then one panel per
step with the view, its grid, the chosen cell and, when known, the true position.

OpenCV only (the runtime's own dependency), so a Jetson can draw too.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .geometry import Region, distance_m, square_bounds

PANEL = 256  # panel height in pixels
CHOSEN = (255, 210, 0)  # RGB
GRID = (255, 255, 255)
TRUTH = (255, 40, 40)
TEXT = (20, 20, 20)


def view_images(region: Region, path, store=None, source=None) -> list[np.ndarray]:
    """The views along ``path`` (levels 0 .. steps-1): rendered from ``source`` when given, at least at
    the panel size (sharp at every level, whatever the model's view size), else the store's
    thumbnails (small: the coarse levels look soft when enlarged)."""
    path = [int(a) for a in path]
    if source is not None:
        centres, px = region.view_centers(path), max(region.view_px, PANEL)
        return [source.render(centres[lvl], float(region.level_size_m(lvl)), px, allow_padding=True)
                for lvl in range(region.steps)]
    if store is not None and store.pixels is not None:
        return [store.view_pixels(path[:lvl]) for lvl in range(region.steps)]
    raise ValueError("drawing the zoom path needs view pixels: build the store with --thumbs PX, or pass --source")


def truth_offset(region: Region, centre, level: int, truth, px: int) -> tuple[float, float]:
    """(x, y) of ``truth`` in the pixels of the ``px``-wide view at ``level`` centred on ``centre``;
    outside 0..px when the truth lies outside the view."""
    south, north, west, east = square_bounds(centre, region.level_size_m(level))
    return (truth[1] - west) / (east - west) * px, (north - truth[0]) / (north - south) * px


def truth_pixel(region: Region, centre, level: int, truth, px: int):
    """(x, y) of ``truth`` inside the view at ``level`` centred on ``centre``, or None when outside it."""
    x, y = truth_offset(region, centre, level, truth, px)
    if not (0 <= x <= px and 0 <= y <= px):
        return None
    return int(round(x)), int(round(y))


def _distance_text(metres: float) -> str:
    return f"{metres / 1000:.1f} km" if metres >= 1000 else f"{metres:.0f} m"


def _truth_marker(panel: np.ndarray, xy) -> None:
    cv2.circle(panel, xy, 6, TRUTH, 2, cv2.LINE_AA)
    cv2.drawMarker(panel, xy, TRUTH, cv2.MARKER_CROSS, 8, 2)


def _truth_arrow(panel: np.ndarray, x: float, y: float, distance: str) -> None:
    """An arrow at the panel's edge pointing towards a truth outside it, labelled with its distance."""
    h = panel.shape[0]
    c = h / 2
    dx, dy = x - c, y - c
    scale = (c - 6) / max(abs(dx), abs(dy))  # onto the square 6 px inside the edge
    tip = (int(round(c + dx * scale)), int(round(c + dy * scale)))
    tail = (int(round(c + dx * scale * 0.72)), int(round(c + dy * scale * 0.72)))
    cv2.arrowedLine(panel, tail, tip, TRUTH, 3, cv2.LINE_AA, tipLength=0.35)
    (tw, th), _ = cv2.getTextSize(distance, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    tx = int(np.clip(tail[0] - tw / 2, 2, h - tw - 2))
    ty = int(np.clip(tail[1] + (th + 8 if dy < 0 else -8), th + 2, h - 4))
    cv2.rectangle(panel, (tx - 2, ty - th - 3), (tx + tw + 2, ty + 3), (255, 255, 255), -1)
    cv2.putText(panel, distance, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TRUTH, 1, cv2.LINE_AA)


def _label(img: np.ndarray, text: str, y: int, x: int = 6, colour=TEXT) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def _legend(canvas: np.ndarray, y: int, with_truth: bool) -> None:
    """Swatches and words for what the panels show, left to right along row ``y``."""
    x = 8
    cv2.rectangle(canvas, (x, y - 11), (x + 14, y + 3), CHOSEN, 3)
    x += 22
    text = "chosen cell (p = the model's probability for it)"
    _label(canvas, text, y, x)
    x += cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 24
    if with_truth:
        _truth_marker(canvas, (x + 6, y - 4))
        x += 20
        text = "true position"
        _label(canvas, text, y, x)
        x += cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 24
        cv2.arrowedLine(canvas, (x, y - 4), (x + 18, y - 4), TRUTH, 3, cv2.LINE_AA, tipLength=0.4)
        x += 26
        _label(canvas, "true position outside the view, its distance from the view centre", y, x)


def draw_zoom(photo: np.ndarray, views: list[np.ndarray], region: Region, path, step_probs=None, truth=None,
              caption: str | None = None) -> np.ndarray:
    """One RGB picture: photo | view 0 | view 1 | ... with grids, chosen cells, the truth on every panel
    (a marker inside the view, an arrow with the distance at the edge outside it), a caption and a legend."""
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
            x, y = truth_offset(region, centres[lvl], lvl, truth, h)
            if 0 <= x <= h and 0 <= y <= h:
                _truth_marker(panel, (int(round(x)), int(round(y))))
            else:
                _truth_arrow(panel, x, y, _distance_text(float(distance_m(centres[lvl], truth))))
        prob = f" p={step_probs[lvl]:.2f}" if step_probs is not None else ""
        titles.append(f"level {lvl}: {region.level_size_m(lvl):g} m, cell {path[lvl]}{prob}")
        panels.append(panel)
    gap = 8
    width = max(sum(p.shape[1] for p in panels) + gap * (len(panels) + 1), 900)
    canvas = np.full((h + 84, width, 3), 255, np.uint8)
    x = gap
    for panel, title in zip(panels, titles):
        canvas[28:28 + h, x:x + panel.shape[1]] = panel
        sub = canvas[:, x:x + panel.shape[1]]
        _label(sub, title, 18)
        x += panel.shape[1] + gap
    if caption:
        _label(canvas, caption, h + 50)
    _legend(canvas, h + 74, truth is not None)
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
