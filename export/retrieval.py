"""Flat retrieval, the Sample4Geo-style baseline jzi is compared against.

One embedding per finest cell, exhaustive inner-product search. ``FlatIndex`` is the search
(numpy, no torch); ``train_infonce`` trains an encoder contrastively on (street photo, finest
view) pairs for the accuracy comparison.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jzi.runtime.geometry import Region


class FlatIndex:
    """Exhaustive inner-product search over L2-normalised cell embeddings [N, D]."""

    def __init__(self, embeddings: np.ndarray, region: Region | None = None, chunk: int = 1 << 18):
        self.db = embeddings
        self.region = region
        self.chunk = chunk  # rows per matmul block: bounds the temporary score buffer

    @staticmethod
    def normalised(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (indices [B, k], scores [B, k]), best first."""
        q = self.normalised(queries)
        best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
        best_s = np.zeros((q.shape[0], 0), dtype=np.float32)
        for start in range(0, self.db.shape[0], self.chunk):
            block = self.db[start:start + self.chunk]
            scores = (q @ np.asarray(block, dtype=np.float32).T).astype(np.float32)
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
            cand_i = np.concatenate([best_i, top + start], 1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        return best_i, best_s

    def latlon(self, indices: np.ndarray) -> np.ndarray:
        """Finest-cell indices -> cell centres (needs the region)."""
        paths = self.region.index_path(self.region.steps, indices)
        return self.region.path_center(paths)


RANDOM_BLOCK = 1 << 16  # rows per seeded block of a random database


def random_blocks(n: int) -> int:
    """How many seeded blocks make the random database of n rows."""
    return -(-n // RANDOM_BLOCK)


def random_block(n: int, d: int, block: int, seed: int = 0) -> np.ndarray:
    """Rows ``block * RANDOM_BLOCK`` onwards (at most RANDOM_BLOCK, at most up to n) of the random database
    ``random_database(n, d, seed)``: each block has its own seed, so any part can be made on its own (a database
    larger than memory is then read block by block, in any order, and is the same every time)."""
    rows = min(RANDOM_BLOCK, n - block * RANDOM_BLOCK)
    x = np.random.default_rng([seed, block]).standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_database(n: int, d: int, seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, float]:
    """A database of n random unit embeddings, and the seconds it took to make (the scale benchmark)."""
    t0 = time.perf_counter()
    db = np.empty((n, d), dtype=dtype)
    for b in range(random_blocks(n)):
        db[b * RANDOM_BLOCK:(b + 1) * RANDOM_BLOCK] = random_block(n, d, b, seed)
    return db, time.perf_counter() - t0


# ---- the contrastive baseline (Sample4Geo-style InfoNCE), for the accuracy comparison ------------------------------
CONTEXT_CELLS = 4  # a database crop spans 4 finest cells (156 m by default): about what a street photo sees


def load_raster_source(root):
    """The world's GeoTIFF held in memory (fast enough to render every finest-cell crop)."""
    import rasterio

    from jzi.runtime.imagery import ArraySource, GeoTiffSource

    tif = next(iter(sorted(Path(root).glob("*.tif"))), None)
    if tif is None:
        return None
    with rasterio.open(tif) as ds:
        if ds.crs is None or ds.crs.to_epsg() != 4326:
            return GeoTiffSource(tif)  # any other CRS: the windowed reader
        img = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
        b = ds.bounds
        return ArraySource(img, (b.bottom, b.top, b.left, b.right))


class CellCrops:
    """Crops centred on every finest cell, CONTEXT_CELLS cells wide, cut from one rendered mosaic.

    Rendering 65 536 crops one by one is slow; the mosaic of the whole region (plus half a crop of
    margin) is rendered once at the crops' resolution and each crop is a slice of it.
    """

    def __init__(self, source, region: Region, px: int):
        if px % (2 * CONTEXT_CELLS):
            raise ValueError(f"crop size {px} must be a multiple of {2 * CONTEXT_CELLS}")
        self.region, self.px = region, px
        self.cell_px = px // CONTEXT_CELLS
        self.side = region.grid**region.steps  # finest cells per side
        mosaic_px = self.side * self.cell_px + px
        size_m = region.size_m * mosaic_px / (self.side * self.cell_px)
        self.mosaic = source.render(region.center, size_m, mosaic_px, allow_padding=True)

    def __call__(self, cells) -> np.ndarray:
        """uint8 [N, px, px, 3] for finest-cell indices (tile-store order within the last level)."""
        paths = self.region.index_path(self.region.steps, np.asarray(cells))
        row = np.zeros(len(paths), np.int64)
        col = np.zeros(len(paths), np.int64)
        for lvl in range(self.region.steps):
            r, c = np.divmod(paths[:, lvl], self.region.grid)
            row, col = row * self.region.grid + r, col * self.region.grid + c
        top, left = row * self.cell_px + self.cell_px // 2, col * self.cell_px + self.cell_px // 2
        return np.stack([self.mosaic[t:t + self.px, l:l + self.px] for t, l in zip(top, left)])


def train_infonce(cfg, root, source, minutes: float, batch: int = 64, lr: float = 3e-4, temperature: float = 0.07,
                  seed: int = 0, log=print):
    """Train the preset's encoder with symmetric InfoNCE on (street photo, finest-cell crop) pairs.

    Same encoder, same optimiser and the same wall-clock budget as jzi's training: the fair baseline.
    """
    import torch
    import torch.nn.functional as F

    from .data import image_path, load_street_image, read_split, split_halves, street_transforms
    from .model import JustZoomIn, normalize

    torch.manual_seed(seed)
    region = cfg.zoom
    records = read_split(root, "train", region, log=log)
    photos = [load_street_image(image_path(root, r.image_id)) for r in records]
    cells = region.path_index(np.array([r.path for r in records]))
    crops = torch.from_numpy(CellCrops(source, region, cfg.image_size)(cells))
    model = JustZoomIn(cfg)
    encoder = model.encoder.train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    aug = street_transforms(cfg.image_size, seed)
    rng = np.random.default_rng(seed)
    t0, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < 60 * minutes:
        pick = rng.choice(len(records), size=min(batch, len(records)), replace=False)
        halves = np.stack([split_halves(aug(image=photos[i])["image"]) for i in pick])
        g = model.encode_street(normalize(torch.from_numpy(halves)))
        v = encoder(normalize(crops[pick]))
        logits = F.normalize(g, dim=-1) @ F.normalize(v, dim=-1).T / temperature
        target = torch.arange(len(pick))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
    log(f"infonce: {steps} steps in {minutes:g} min, last loss {np.mean(losses[-10:]):.3f}")
    return model.eval(), {"steps": steps, "minutes": minutes, "final_loss": float(np.mean(losses[-10:]))}


def evaluate_retrieval(model, root, source, split: str = "test", batch: int = 1024, log=print) -> dict:
    """Encode every finest-cell crop once, then exhaustive search for each query photo."""
    import torch

    from .data import image_path, load_street_image, read_split, split_halves, stretch_street
    from .evaluate import path_metrics
    from .model import normalize

    region, px = model.cfg.zoom, model.cfg.image_size
    n = region.n_views(region.steps)
    t0 = time.perf_counter()
    db = np.empty((n, model.cfg.width), np.float32)
    crops = CellCrops(source, region, px)
    with torch.inference_mode():
        for s in range(0, n, batch):
            cells = np.arange(s, min(s + batch, n))
            db[cells] = model.encode_views(normalize(torch.from_numpy(crops(cells)))).numpy()
        build_s = time.perf_counter() - t0
        index = FlatIndex(FlatIndex.normalised(db), region)
        records = read_split(root, split, region, log=log)
        halves = np.stack([split_halves(stretch_street(load_street_image(image_path(root, r.image_id)), px))
                           for r in records])
        q = model.encode_street(normalize(torch.from_numpy(halves))).numpy()
    found, _ = index.search(q, k=1)
    pred = region.index_path(region.steps, found[:, 0])
    out = path_metrics(pred, np.array([r.path for r in records]), np.array([r.latlon for r in records]), region)
    out.update({"database_cells": n, "database_build_s": build_s, "database_mb": db.nbytes / 2**20})
    return out
