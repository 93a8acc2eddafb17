"""The in-memory training path: every view and every street photo decoded once, augmented in batches.

The authors' loader renders views, decodes JPEGs and augments one sample at a time (albumentations
in DataLoader workers): on a 2-core CPU that loop, not the model, is the limit (14-20 samples/s for
the tiny preset). Here:

- every satellite view of the region is rendered once into one uint8 tensor [V, px, px, 3]
  (``ViewBank``; the tiny preset's 4 369 views at 64 px are 54 MB),
- every street photo of a split is decoded once and stretched with the runtime's street resize to
  ``photo_scale`` times the model's input ([N, s*px, s*2px, 3] uint8), so a random resized crop
  still has pixels to crop from (scale 1 for validation: exactly the runtime's pixels),
- augmentations are batched tensor operations (random resized crop by one ``grid_sample``, colour
  jitter, grey, blur/sharpen, coarse dropout per half; satellite levels >= 1 get colour, blur and
  dropout, level 0 never), seeded by a ``torch.Generator`` so a run is repeatable.

Differences from the authors' albumentations recipe, on purpose: no JPEG re-compression (it cannot
be batched; the photos are JPEGs already) and a hue jitter that defaults to 0 in the CPU recipe
(hue is an identity cue of districts and neighbourhoods in the synthetic world; see RESULTS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from jzi.runtime.images import street_input

from .data import DataError, Record, ViewBank, load_training_photo
from .model import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Augment:
    """Strengths of the batched augmentations (probabilities and ranges as in the authors' recipe)."""
    crop_scale: tuple = (0.7, 1.0)  # area share kept by the random resized crop (aspect 2:1 kept)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0  # radians/2pi of hue rotation; the authors use 0.05
    colour_p: float = 0.8
    grey_p: float = 0.1
    blur_p: float = 0.15
    sharpen_p: float = 0.15
    dropout_p: float = 0.3  # per street half, and per satellite view of levels >= 1
    view_colour: float = 0.15
    view_colour_p: float = 0.5
    view_blur_p: float = 0.2
    view_dropout_p: float = 0.2


def load_streets(root, records: list[Record], size: int, photo_scale: int = 2, progress: bool = False) -> torch.Tensor:
    """uint8 [N, s*size, 2*s*size, 3]: each photo decoded once and stretched with the runtime's resize."""
    h = size * photo_scale
    out = torch.empty((len(records), h, 2 * h, 3), dtype=torch.uint8)
    it = range(len(records))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="decode street photos", unit="img", leave=False)
    for i in it:
        out[i] = torch.from_numpy(street_input(load_training_photo(root, records[i]), h))
    return out


def _uniform(gen, n, lo, hi) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _chance(gen, n, p) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


_GREY = torch.tensor([0.299, 0.587, 0.114])


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (x * _GREY.view(1, 3, 1, 1).to(x)).sum(1, keepdim=True)


def colour_jitter(x: torch.Tensor, gen, p: float, brightness: float, contrast: float, saturation: float,
                  hue: float = 0.0) -> torch.Tensor:
    """Per-image brightness, contrast, saturation (and hue rotation) on float [B, 3, H, W] in 0..1."""
    b = x.shape[0]
    on = _chance(gen, b, p).view(b, 1, 1, 1).to(x)

    def factor(strength):
        return (1 + (_uniform(gen, b, -strength, strength).view(b, 1, 1, 1).to(x) * on))

    x = x * factor(brightness)
    mean = _grey(x).mean((2, 3), keepdim=True)
    x = (x - mean) * factor(contrast) + mean
    g = _grey(x)
    x = (x - g) * factor(saturation) + g
    if hue > 0:  # rotate chroma around the grey axis (YIQ)
        angle = _uniform(gen, b, -hue, hue).to(x) * 2 * math.pi * on.view(b)
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]).to(x)
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(b, 3, 3).to(x)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
        m = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("bij,bjhw->bihw", m, x)
    return x.clamp(0, 1)


def blur_or_sharpen(x: torch.Tensor, gen, blur_p: float, sharpen_p: float) -> torch.Tensor:
    """A 3x3 Gaussian blur or an unsharp mask on a random share of the images."""
    b = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0]).to(x)
    k = (k[:, None] * k[None, :]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    u = torch.rand(b, generator=gen).view(b, 1, 1, 1).to(x)
    x = torch.where(u < blur_p, blurred, x)
    return torch.where((u >= blur_p) & (u < blur_p + sharpen_p), (2 * x - blurred).clamp(0, 1), x)


def coarse_dropout(x: torch.Tensor, gen, p: float, holes: tuple = (1, 4), size: tuple = (0.1, 0.25)) -> torch.Tensor:
    """Zero 1-4 random rectangles (10-25 % of each side) in a random share of the images."""
    b, _, h, w = x.shape
    keep = torch.ones(b, 1, h, w).to(x)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    on = _chance(gen, b, p)
    for i in range(holes[1]):
        active = on & (torch.randint(holes[0], holes[1] + 1, (b,), generator=gen) > i)
        hh = (_uniform(gen, b, *size) * h).long().view(b, 1, 1)
        ww = (_uniform(gen, b, *size) * w).long().view(b, 1, 1)
        y0 = (torch.rand(b, generator=gen).view(b, 1, 1) * (h - hh + 1)).long()
        x0 = (torch.rand(b, generator=gen).view(b, 1, 1) * (w - ww + 1)).long()
        hole = (ys >= y0) & (ys < y0 + hh) & (xs >= x0) & (xs < x0 + ww) & active.view(b, 1, 1)
        keep = keep * (~hole).unsqueeze(1).to(x)
    return x * keep


def _normalize01(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(x)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(x)
    return (x - mean) / std


def street_batch(photos: torch.Tensor, size: int, gen: torch.Generator | None, aug: Augment | None) -> torch.Tensor:
    """Stored photos uint8 [B, H, 2H, 3] -> normalised halves [B, 2, 3, size, size] (augmented if ``aug``)."""
    b = photos.shape[0]
    x = photos.permute(0, 3, 1, 2).float() / 255
    if aug is None:
        if x.shape[-2] != size:  # stored at a larger scale: bilinear with half-pixel centres, like the runtime's
            x = F.interpolate(x, size=(size, 2 * size), mode="bilinear", align_corners=False, antialias=False)
    else:
        side = torch.sqrt(_uniform(gen, b, *aug.crop_scale))  # aspect kept: both sides scale by sqrt(area)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, 0, 2] = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
        theta[:, 1, 2] = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
        grid = F.affine_grid(theta.to(x), [b, 3, size, 2 * size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = colour_jitter(x, gen, aug.colour_p, aug.brightness, aug.contrast, aug.saturation, aug.hue)
        x = torch.where(_chance(gen, b, aug.grey_p).view(b, 1, 1, 1), _grey(x).expand_as(x), x)
        x = blur_or_sharpen(x, gen, aug.blur_p, aug.sharpen_p)
    halves = torch.stack([x[..., :size], x[..., size:2 * size]], 1)  # [B, 2, 3, size, size]
    if aug is not None:
        halves = coarse_dropout(halves.flatten(0, 1), gen, aug.dropout_p).view_as(halves)
    return _normalize01(halves.flatten(0, 1)).view_as(halves)


def view_batch(views: torch.Tensor, levels: torch.Tensor, gen: torch.Generator | None, aug: Augment | None) -> torch.Tensor:
    """Views uint8 [N, px, px, 3] of ``levels`` [N] -> normalised [N, 3, px, px]; level 0 is never augmented."""
    x = views.permute(0, 3, 1, 2).float() / 255
    if aug is not None and len(x):
        n = x.shape[0]
        y = colour_jitter(x, gen, aug.view_colour_p, aug.view_colour, aug.view_colour, aug.view_colour)
        y = blur_or_sharpen(y, gen, aug.view_blur_p, 0.0)
        y = coarse_dropout(y, gen, aug.view_dropout_p, holes=(1, 3), size=(0.05, 0.15))
        x = torch.where((levels > 0).view(n, 1, 1, 1), y, x)
    return _normalize01(x)


class MemoryData:
    """The tensors of one split: street photos and true paths, and (``with_views``) the region's view pixels
    and each query's view rows along its true path. ``size`` is the model's input size."""

    def __init__(self, root, records: list[Record], bank: ViewBank | None, size: int, photo_scale: int = 2,
                 progress: bool = False, with_views: bool = True):
        self.size = size
        self.paths = torch.tensor([r.path for r in records], dtype=torch.long)
        self.latlon = np.array([r.latlon for r in records])
        self.views = self.rows = None
        if with_views:
            if bank.views is None:
                raise DataError(f"the in-memory recipe needs every view pre-rendered (views of {bank.region.view_px} "
                                "px are rendered lazily); use the authors' recipe for this preset")
            region = bank.region
            self.views = torch.from_numpy(np.array(bank.views))
            self.view_level = torch.from_numpy(np.concatenate([np.full(region.n_views(lv), lv)
                                                               for lv in range(region.steps)]))
            self.rows = torch.from_numpy(bank.indices(self.paths.numpy()))  # [N, S] view rows along the true path
        self.photos = load_streets(root, records, size, photo_scale, progress)

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, idx: torch.Tensor, gen: torch.Generator | None, aug: Augment | None):
        """(street halves [B,2,3,px,px], distinct views [U,3,px,px], inverse [B,S] into them, actions [B,S])."""
        rows = self.rows[idx]
        unique, inverse = torch.unique(rows, return_inverse=True)
        views = view_batch(self.views[unique], self.view_level[unique], gen, aug)
        return street_batch(self.photos[idx], self.size, gen, aug), views, inverse, self.paths[idx]
