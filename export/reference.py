"""The authors' inference pipeline, reproduced faithfully as the baseline for benchmarks.

Their evaluation, per query: encode the street photo, then at every step render the current
satellite view from imagery, encode it with the ViT, and re-run the whole decoder over the
sequence so far padded to full length (no KV cache: their code marks it as a TODO). That is
2 + 4 ViT passes and 4 full decoder passes per query, in PyTorch eager.

This file exists to be measured against; jzi's runtime (jzi.runtime.localizer) is what to deploy.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from jzi.runtime.images import street_input

from .model import JustZoomIn, greedy_from_embeddings, normalize, split_street


class AuthorsPipeline:
    def __init__(self, model: JustZoomIn, source, threads: int | None = None):
        self.model = model.eval()
        self.source = source  # jzi.runtime.imagery source: render(center_latlon, size_m, px) -> uint8 [px, px, 3]
        self.region = model.cfg.zoom
        if threads:
            torch.set_num_threads(threads)

    def street_tensor(self, photo: np.ndarray) -> torch.Tensor:
        s = self.model.cfg.image_size
        resized = street_input(photo, s)
        return split_street(normalize(torch.from_numpy(resized)[None]))

    @torch.inference_mode()
    def localize(self, photo: np.ndarray) -> dict:
        """One RGB uint8 photo -> {latlon, path, timings (s)}."""
        cfg, region = self.model.cfg, self.region
        t = {"render": 0.0, "encode": 0.0, "decode": 0.0}
        t0 = time.perf_counter()
        g = self.model.encode_street(self.street_tensor(photo))
        t["encode"] += time.perf_counter() - t0
        steps, d = region.steps, cfg.width
        center, size = region.center, region.size_m
        views, path = [], []
        for k in range(steps):
            t0 = time.perf_counter()
            pixels = self.source.render(center, size, cfg.image_size)
            t1 = time.perf_counter()
            views.append(self.model.encode_views(normalize(torch.from_numpy(np.ascontiguousarray(pixels))[None])))
            t2 = time.perf_counter()
            seq = F.pad(torch.stack(views, 1), (0, 0, 0, steps - k - 1))
            acts = torch.zeros(1, steps, dtype=torch.long)
            acts[0, :k] = torch.tensor(path, dtype=torch.long)
            action = int(self.model.decoder(g, seq, acts)[0, k].argmax())
            t3 = time.perf_counter()
            t["render"] += t1 - t0
            t["encode"] += t2 - t1
            t["decode"] += t3 - t2
            path.append(action)
            center = region.child_center(center, size, action)
            size = size / region.grid
        latlon = region.path_center(np.array(path))
        return {"latlon": latlon, "path": path, "timings": t}


@torch.inference_mode()
def decoder_loop(decoder, g: torch.Tensor, view_table, steps: int, cached: bool) -> torch.Tensor:
    """Greedy decoding from precomputed view embeddings, with the KV cache or by full recompute.

    ``view_table[level]`` is [n, D]; the view for a path prefix is row (index within the level)
    mod n — the tile-store layout when n = n_views(level), a stand-in table for deep presets
    whose levels would not fit. Returns the final cell index within the last level.
    """
    region = decoder.cfg.zoom

    def index(path: torch.Tensor) -> torch.Tensor:  # view index within its level, tile-store order
        return torch.from_numpy(region.path_index(path.numpy()))

    def view(path: torch.Tensor) -> torch.Tensor:
        table = view_table[path.shape[1]]
        return table[index(path) % len(table)]

    if cached:
        paths, _ = greedy_from_embeddings(decoder, g, view, steps)
        return index(paths)
    seen, acts = [], torch.zeros(g.shape[0], steps, dtype=torch.long)
    for k in range(steps):
        seen.append(view(acts[:, :k]))
        seq = F.pad(torch.stack(seen, 1), (0, 0, 0, steps - k - 1))
        acts[:, k] = decoder(g, seq, acts)[:, k].argmax(-1)
    return index(acts)
