"""``jzi-bench reference``: jzi against the authors' pipeline (render + encode every view, no KV cache)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bench_latency import percentiles
from .bench_workdir import Workdir


def suite_reference(args, wd: Workdir) -> list[dict]:
    """Per query, the authors' pipeline (render, encode 4 views, decoder re-run each step) vs jzi."""
    import torch

    from jzi.runtime.imagery import open_source
    from jzi.runtime.localizer import Localizer

    from .checkpoint import load_checkpoint
    from .reference import AuthorsPipeline

    if not args.source:
        raise SystemExit("jzi-bench: error: the reference suite needs --source IMAGERY (e.g. a synthetic world's "
                         "satellite/ folder from jzi-synth)")
    source = open_source(args.source)
    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        photos = wd.photos(args.queries)
        model, _ = load_checkpoint(ckpt)
        torch.set_num_threads(args.threads)
        ref = AuthorsPipeline(model, source)
        fp32 = wd.bundle(ckpt, "fp32")
        store = Path(args.tiles) if args.tiles else wd.random_store(fp32)
        jzi = {p: Localizer(wd.bundle(ckpt, p), store, backend="ort-cpu", threads=args.threads) for p in ("fp32", "int8")}
        from jzi.runtime.images import load_rgb

        for p in photos[:2]:  # warm-up
            ref.localize(load_rgb(p))
            for loc in jzi.values():
                loc.localize(p)
        ref_ms, jzi_ms = [], {p: [] for p in jzi}
        for p in photos:
            t0 = time.perf_counter()
            ref.localize(load_rgb(p))  # decoding included, as jzi's figure includes it
            ref_ms.append((time.perf_counter() - t0) * 1e3)
            for prec, loc in jzi.items():
                jzi_ms[prec].append(loc.localize(p).timings["total_ms"])
        row = {"preset": preset, "queries": len(photos), "reference_ms": percentiles(ref_ms),
               "store": "built from the source" if args.tiles else "random embeddings (speed only)"}
        for prec, ms in jzi_ms.items():
            row[f"jzi_{prec}_ms"] = percentiles(ms)
            row[f"speedup_{prec}"] = float(np.median(np.array(ref_ms) / np.array(ms)))
        rows.append(row)
    return rows
