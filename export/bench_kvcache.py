"""``jzi-bench kvcache``: the decoder loop with the KV cache against full recompute, at 4 and 8 steps."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .bench_workdir import Workdir


def suite_kvcache(args, wd: Workdir) -> list[dict]:
    import torch

    from .config import get_preset
    from .model import Decoder
    from .reference import decoder_loop

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        for steps in (4, 8):
            cfg = get_preset(preset)
            cfg = cfg.with_region(replace(cfg.zoom, steps=steps))
            dec = Decoder(cfg).eval()
            g = torch.randn(1, cfg.width)
            table = [torch.randn(min(16**lvl, 4096), cfg.width) for lvl in range(steps)]
            times = {}
            for cached in (True, False):
                decoder_loop(dec, g, table, steps, cached)
                ms = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    decoder_loop(dec, g, table, steps, cached)
                    ms.append((time.perf_counter() - t0) * 1e3)
                times["cached" if cached else "recompute"] = float(np.median(ms))
            rows.append({"preset": preset, "steps": steps, "kv_cache_ms": times["cached"],
                         "recompute_ms": times["recompute"], "speedup": times["recompute"] / times["cached"]})
    return rows
