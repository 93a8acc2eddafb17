"""The authors' dataset format, read for training and evaluation (DESIGN §2).

A dataset root holds::

    metadata/<split>.csv                      image_id, latitude, longitude, sequence ("[4, 13, 1, 7]")
    streetview/images/{image_id}_undistorted.jpg
    satellite/layout.yaml                     tiledwebmaps XYZ tiles (or pass any imagery to ``open_source``)

:func:`read_split` validates the metadata once: missing or corrupt images, points outside the
region and malformed sequences are counted and named in one summary line, then skipped (or refused
with ``on_bad="error"``), so nothing fails later inside a DataLoader worker.

:class:`ZoomDataset` yields teacher-forcing samples: the street photo stretched to H x 2H and split
into halves, and the satellite views along the true path (level 0 .. S-1), with the augmentations
of the authors' recipe (albumentations). Views do not depend on the query, so :class:`ViewBank`
renders each of the region's views once.
"""
from __future__ import annotations

import ast
import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from jzi.runtime.geometry import Region
from jzi.runtime.imagery import ImagerySource, open_source
from jzi.runtime.images import STREET_INTERPOLATION, street_input

IMAGE_SUFFIX = "_undistorted.jpg"
REQUIRED_COLUMNS = ("image_id", "latitude", "longitude", "sequence")
BAD_KINDS = ("missing image", "corrupt image", "outside region", "malformed sequence", "bad coordinates")


class DataError(ValueError):
    """A dataset that cannot be used, with one line saying why."""


@dataclass(frozen=True)
class Record:
    image_id: str
    latlon: tuple[float, float]
    path: tuple[int, ...]


# ---- reading and validating ----------------------------------------------------------------------------
def image_path(root, image_id: str) -> Path:
    return Path(root) / "streetview" / "images" / f"{image_id}{IMAGE_SUFFIX}"


def metadata_path(root, split: str) -> Path:
    """``split`` is a split name under ``metadata/`` or a path to a CSV."""
    p = Path(split)
    if p.suffix == ".csv":
        return p if p.is_absolute() or p.exists() else Path(root) / p
    return Path(root) / "metadata" / f"{split}.csv"


def parse_sequence(text: str, steps: int, n_actions: int) -> tuple[int, ...]:
    """"[4, 13, 1, 7]" -> (4, 13, 1, 7); ValueError naming what is wrong."""
    try:
        seq = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"not a list: {text!r}") from None
    if not isinstance(seq, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in seq):
        raise ValueError(f"not a list of integers: {text!r}")
    if len(seq) != steps:
        raise ValueError(f"{len(seq)} actions, expected {steps}: {text!r}")
    if not all(0 <= a < n_actions for a in seq):
        raise ValueError(f"actions must be 0..{n_actions - 1}: {text!r}")
    return tuple(int(a) for a in seq)


def load_street_image(path) -> np.ndarray | None:
    """RGB uint8 [H, W, 3], or None when the file is missing or not a decodable image."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None or data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_training_photo(root, record: "Record") -> np.ndarray:
    """A validated record's photo during training; DataError if it vanished or broke since ``read_split``."""
    img = load_street_image(image_path(root, record.image_id))
    if img is None:
        raise DataError(f"{record.image_id}: street photo vanished or became unreadable during training")
    return img


def read_split(root, split: str, region: Region, on_bad: str = "skip", verify_images: bool = True,
               log=print) -> list[Record]:
    """The valid records of one split; bad rows are counted, named in one line, and skipped or refused."""
    if on_bad not in ("skip", "error"):
        raise ValueError("on_bad must be 'skip' or 'error'")
    csv_path = metadata_path(root, split)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such metadata file")
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
            columns = rows[0].keys() if rows else []
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: not a readable CSV ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}")
    bad: dict[str, list[str]] = {k: [] for k in BAD_KINDS}
    records = []
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them (header is line 1)
        image_id = (row.get("image_id") or "").strip()
        name = image_id or f"line {i}"
        try:
            lat, lon = float(row["latitude"]), float(row["longitude"])
            if not (np.isfinite(lat) and np.isfinite(lon)):
                raise ValueError
        except (TypeError, ValueError):
            bad["bad coordinates"].append(name)
            continue
        try:
            path = parse_sequence(row.get("sequence") or "", region.steps, region.n_actions)
        except ValueError:
            bad["malformed sequence"].append(name)
            continue
        if not region.contains(np.array([lat, lon])):
            bad["outside region"].append(name)
            continue
        img = image_path(root, image_id)
        if not image_id or not img.is_file():
            bad["missing image"].append(name)
            continue
        if verify_images and load_street_image(img) is None:
            bad["corrupt image"].append(name)
            continue
        records.append(Record(image_id, (lat, lon), path))
    n_bad = sum(len(v) for v in bad.values())
    if n_bad:
        parts = [f"{len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in bad.items() if v]
        line = f"{csv_path}: {len(rows)} rows, {n_bad} bad: " + "; ".join(parts)
        if on_bad == "error":
            raise DataError(line + " (refused: on_bad=error)")
        log(line + f"; skipped, {len(records)} used")
    if not records:
        raise DataError(f"{csv_path}: no usable rows")
    return records


# ---- satellite views ---------------------------------------------------------------------------------------
class ViewBank:
    """The zoom views of a region (tile-store order), each rendered once from an imagery source.

    Small views (<= ``prerender_px``) are all rendered up front and can be cached in ``cache`` (a
    .npy file, reused only if its shape and a few spot-checked views match the imagery); large ones
    are rendered on first use and kept.
    """

    def __init__(self, source, region: Region, cache=None, progress: bool = False, prerender_px: int = 128):
        self.region = region
        self.source = source
        self.views = None
        self._lazy: dict[int, np.ndarray] = {}
        if region.view_px > prerender_px:
            return
        cache = Path(cache) if cache else None
        shape = (region.total_views, region.view_px, region.view_px, 3)
        if cache is not None and cache.is_file():
            views = np.load(cache, mmap_mode="r")
            if views.shape == shape and views.dtype == np.uint8 and self._matches(views):
                self.views = np.ascontiguousarray(views)
                return
        self.views = self._source().render_region(region, progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp.npy")
            np.save(tmp, self.views)
            tmp.replace(cache)

    def _matches(self, views) -> bool:
        """A cache is reused only if a few of its views equal fresh renders (same imagery, same region)."""
        r = self.region
        rows = [0, r.level_offset(r.steps - 1), r.total_views - 1]
        return all(np.array_equal(views[i], self._render_row(i)) for i in rows)

    def _render_row(self, i: int) -> np.ndarray:
        r = self.region
        level = int(np.searchsorted([r.level_offset(lv + 1) for lv in range(r.steps)], i, side="right"))
        path = r.index_path(level, i - r.level_offset(level))
        return self._source().render(r.view_centers(path)[-1], r.level_size_m(level), r.view_px)

    def _source(self) -> ImagerySource:
        if not isinstance(self.source, ImagerySource):
            self.source = open_source(self.source)
        return self.source

    def images(self, indices) -> np.ndarray:
        """uint8 [..., px, px, 3] for view rows ``indices`` [...]."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.views is not None:
            return self.views[indices]
        r = self.region
        for i in np.unique(indices):
            if int(i) not in self._lazy:
                self._lazy[int(i)] = self._render_row(int(i))
        flat = np.stack([self._lazy[int(i)] for i in indices.reshape(-1)]) if indices.size else \
            np.zeros((0, r.view_px, r.view_px, 3), np.uint8)
        return flat.reshape(indices.shape + flat.shape[1:])

    def indices(self, path) -> np.ndarray:
        """Rows of the views along ``path`` [..., S]: level l shows the cell reached by path[:l]."""
        path = np.asarray(path, dtype=np.int64)
        r = self.region
        return np.stack([r.level_offset(lvl) + r.path_index(path[..., :lvl]) for lvl in range(path.shape[-1])], -1)


# ---- augmentations (albumentations) ----------------------------------------------------------------------
def street_transforms(size: int, seed: int | None = None):
    """The authors' street recipe: JPEG, random resized crop to size x 2*size, colour, grey, blur/sharpen."""
    import albumentations as A

    return A.Compose([
        A.ImageCompression(quality_range=(90, 100), p=0.5),
        A.RandomResizedCrop(size=(size, 2 * size), scale=(0.7, 1.0), ratio=(2.0, 2.0),
                            interpolation=STREET_INTERPOLATION),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.8),
        A.ToGray(p=0.1),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Sharpen()], p=0.3),
    ], seed=seed)


def half_dropout(seed: int | None = None):
    """Grid or coarse dropout, applied to each street half on its own."""
    import albumentations as A

    return A.Compose([A.OneOf([A.GridDropout(ratio=0.3), A.CoarseDropout(num_holes_range=(1, 4),
                                                                           hole_height_range=(0.1, 0.25),
                                                                           hole_width_range=(0.1, 0.25))], p=0.3)],
                     seed=seed)


def satellite_transforms(seed: int | None = None):
    """Levels >= 1 only: compression, colour, blur/sharpen, dropout (no flips or rotations: actions are positional)."""
    import albumentations as A

    return A.Compose([
        A.ImageCompression(quality_range=(70, 100), p=0.3),
        A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.Sharpen()], p=0.2),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.2),
    ], seed=seed)


def stretch_street(img: np.ndarray, size: int) -> np.ndarray:
    """Any photo stretched to size x 2*size (the authors' preprocessing without augmentation): the runtime's
    one street resize, so training, evaluation and inference see the same pixels."""
    return street_input(img, size)


def split_halves(img: np.ndarray) -> np.ndarray:
    w = img.shape[1] // 2
    return np.stack([img[:, :w], img[:, w:2 * w]])


# ---- the dataset -------------------------------------------------------------------------------------------------
class ZoomDataset(Dataset):
    """Teacher-forcing samples: dict(ground uint8 [2, H, H, 3], views uint8 [S, H, H, 3], view_rows [S],
    actions [S], latlon [2], index []). Images stay uint8 until the batch reaches the model
    (``model.normalize``)."""

    def __init__(self, root, records: list[Record], bank: ViewBank, augment: bool = False, seed: int = 0,
                 with_views: bool = True):
        self.root = Path(root)
        self.with_views = with_views  # False: return view rows only, for trainers that share views in a batch
        self.records = records
        self.bank = bank
        self.size = bank.region.view_px
        self.augment = augment
        self.seed = seed
        self._build_transforms(seed)

    def _build_transforms(self, seed: int) -> None:
        if self.augment:
            self.street_tf, self.half_tf, self.sat_tf = street_transforms(self.size, seed), half_dropout(seed + 1), \
                satellite_transforms(seed + 2)

    def reseed(self, worker_id: int) -> None:
        """Give each DataLoader worker its own augmentation stream (``worker_init_fn``)."""
        self._build_transforms(self.seed * 1000 + 17 * (worker_id + 1))

    def __len__(self) -> int:
        return len(self.records)

    def street(self, i: int) -> np.ndarray | None:
        img = load_street_image(image_path(self.root, self.records[i].image_id))
        if img is None:
            return None
        if self.augment:
            halves = split_halves(self.street_tf(image=img)["image"])
            return np.stack([self.half_tf(image=h)["image"] for h in halves])
        return split_halves(stretch_street(img, self.size))

    def __getitem__(self, i: int):
        rec = self.records[i]
        ground = self.street(i)
        if ground is None:  # vanished or corrupted since validation: dropped by collate, never a crash
            return None
        rows = self.bank.indices(rec.path)
        out = {"ground": torch.from_numpy(np.ascontiguousarray(ground)), "view_rows": torch.from_numpy(rows)}
        if self.with_views:
            out["views"] = torch.from_numpy(self.view_images(rows))
        return out | {
            "actions": torch.tensor(rec.path, dtype=torch.long),
            "latlon": torch.tensor(rec.latlon, dtype=torch.float64),
            "index": torch.tensor(i),
        }


    def view_images(self, rows) -> np.ndarray:
        """Views for bank rows [N] (any levels), augmented when training; level 0 never is."""
        views = self.bank.images(rows)
        if self.augment:
            views = np.stack([v if r == 0 else self.sat_tf(image=v)["image"] for r, v in zip(np.asarray(rows), views)])
        return np.ascontiguousarray(views)


def collate(samples):
    """Stack samples, dropping any that failed to load (counted in ``dropped``)."""
    good = [s for s in samples if s is not None]
    if not good:
        return None
    out = {k: torch.stack([s[k] for s in good]) for k in good[0]}
    out["dropped"] = len(samples) - len(good)
    return out


def worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(worker_id)
