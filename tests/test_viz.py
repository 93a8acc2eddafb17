"""The zoom-path picture: the truth on every panel (marker inside, arrow at the edge outside), a legend,
and sharp views from the imagery when it is given."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from jzi.runtime.geometry import Region, move_en
from jzi.runtime.viz import CHOSEN, PANEL, TRUTH, draw_zoom, truth_offset, view_images

REGION = Region.default()
PATH = [5, 6, 9, 3]


def _grey_views():
    return [np.full((64, 64, 3), 128, np.uint8) for _ in range(REGION.steps)]


def _panel(img, k):
    """Pixels of view panel k (after the query panel, which is 2 * PANEL wide for this photo)."""
    x0 = 8 + 2 * PANEL + 8 + k * (PANEL + 8)
    return img[28:28 + PANEL, x0:x0 + PANEL]


def _red(a):
    return (a == TRUTH).all(-1)


def test_truth_inside_every_view_is_marked_where_it_is():
    truth = tuple(REGION.path_center(PATH))  # the centre of the final cell: inside every view
    img = draw_zoom(np.zeros((100, 200, 3), np.uint8), _grey_views(), REGION, PATH, [0.9] * 4, truth, "c")
    for k in range(REGION.steps):
        x, y = truth_offset(REGION, REGION.view_centers(PATH)[k], k, truth, PANEL)
        ys, xs = np.nonzero(_red(_panel(img, k)))
        assert len(xs) > 10
        assert abs(xs.mean() - x) < 2 and abs(ys.mean() - y) < 2


def test_truth_outside_a_view_is_an_arrow_at_its_edge_towards_it():
    truth = tuple(move_en(REGION.path_center(PATH), 400.0, 0.0))  # 400 m east: outside the 156 m and 625 m views
    img = draw_zoom(np.zeros((100, 200, 3), np.uint8), _grey_views(), REGION, PATH, None, truth)
    for k in (2, 3):
        x, _ = truth_offset(REGION, REGION.view_centers(PATH)[k], k, truth, PANEL)
        assert x > PANEL
        ys, xs = np.nonzero(_red(_panel(img, k)))
        assert xs.max() >= PANEL - 12 and xs.min() > PANEL / 2  # an arrow against the east edge, and its label
    assert _red(_panel(img, 0)).sum() > 10  # still inside the 10 km view


def test_legend_explains_the_colours():
    img = draw_zoom(np.zeros((100, 200, 3), np.uint8), _grey_views(), REGION, PATH, [0.5] * 4,
                    tuple(REGION.path_center(PATH)))
    legend = img[PANEL + 60:]
    assert (legend == CHOSEN).all(-1).sum() > 20 and _red(legend).sum() > 20
    no_truth = draw_zoom(np.zeros((100, 200, 3), np.uint8), _grey_views(), REGION, PATH)
    assert not _red(no_truth[PANEL + 60:]).any()  # no truth, no truth entries


class _Source:
    def __init__(self):
        self.calls = []

    def render(self, centre, size_m, px, allow_padding=False):
        self.calls.append(size_m)
        return np.full((px, px, 3), 7, np.uint8)


class _Store:
    pixels = True

    def view_pixels(self, prefix):
        return np.zeros((16, 16, 3), np.uint8)


def test_views_come_from_the_imagery_at_full_size_when_given():
    src = _Source()
    views = view_images(REGION, PATH, store=_Store(), source=src)
    assert [v.shape[0] for v in views] == [max(REGION.view_px, PANEL)] * 4 and (views[0] == 7).all()
    tiny = replace(REGION, view_px=64)  # a small model's views are still drawn at the panel size
    assert view_images(tiny, PATH, source=src)[0].shape[0] == PANEL
    assert src.calls[:4] == [REGION.level_size_m(k) for k in range(4)]
    assert all(v.shape[0] == 16 for v in view_images(REGION, PATH, store=_Store()))
