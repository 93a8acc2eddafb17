"""Flat retrieval, the Sample4Geo-style baseline jzi is compared against.

One embedding per finest cell, exhaustive inner-product search. ``FlatIndex`` is the search
(numpy, no torch); ``train_infonce`` trains an encoder contrastively on (street photo, finest
view) pairs for the accuracy comparison.
"""
from __future__ import annotations

import time

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


def random_database(n: int, d: int, seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, float]:
    """A database of n random unit embeddings, and the seconds it took to make (the scale benchmark)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    db = np.empty((n, d), dtype=dtype)
    step = 1 << 16
    for s in range(0, n, step):
        block = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        db[s:s + step] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return db, time.perf_counter() - t0
