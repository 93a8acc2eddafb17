"""``jzi-bench accuracy``: synthetic test split, PyTorch vs runtime (fp32/int8, fp16 store, beam 4) vs InfoNCE retrieval."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_workdir import Workdir


def suite_accuracy(args, wd: Workdir) -> list[dict]:
    """Synthetic test split: PyTorch, the runtime (fp32/int8, fp32/fp16 store, greedy/beam 4), InfoNCE retrieval."""
    from jzi.runtime.geometry import distance_m
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import build_store

    from .checkpoint import load_checkpoint
    from .data import image_path, read_split
    from .evaluate import evaluate, path_metrics
    from .retrieval import evaluate_retrieval, load_raster_source, train_infonce

    if not (args.data and args.checkpoint):
        raise SystemExit("jzi-bench: error: the accuracy suite needs --data WORLD (jzi-synth) and --checkpoint "
                         "(a model trained on it)")
    root, ckpt = Path(args.data), Path(args.checkpoint)
    model, _ = load_checkpoint(ckpt)
    region = model.cfg.zoom
    torch_eval = evaluate(model, root, "test", log=wd.log)
    records = read_split(root, "test", region, log=wd.log)
    photos = [image_path(root, r.image_id) for r in records]
    truth = np.array([r.path for r in records])
    latlon = np.array([r.latlon for r in records])
    torch_paths = np.array(torch_eval["paths"])
    rows = [{"method": "PyTorch greedy (jzi-eval)", **_recalls(torch_eval)}]
    stores = {}
    for dtype in ("float32", "float16"):
        stores[dtype] = wd.root / f"{ckpt.stem}-{dtype}.jzt"
        if not (stores[dtype] / "tiles.json").exists():
            build_store(stores[dtype], wd.bundle(ckpt, "fp32"), root / "satellite", threads=args.threads,
                        dtype=dtype, force=True, progress=False)
    for precision, dtype, beams in (("fp32", "float32", 1), ("fp32", "float16", 1), ("int8", "float16", 1),
                                    ("fp32", "float16", 4)):
        loc = Localizer(wd.bundle(ckpt, precision), stores[dtype], backend="ort-cpu", threads=args.threads)
        res = [loc.localize(p, beams=beams) for p in photos]
        paths = np.array([r.path for r in res])
        m = path_metrics(paths, truth, latlon, region)
        row = {"method": f"jzi {precision} bundle, {dtype} store, " + ("greedy" if beams == 1 else f"beam {beams}"),
               **_recalls(m), "same_path_as_pytorch": float((paths == torch_paths).all(1).mean())}
        if beams > 1:
            best = np.array([[distance_m(np.array([c.latitude, c.longitude]), ll) for c in r.candidates]
                             for r, ll in zip(res, latlon)]).min(1)
            row.update({f"R@{x}m@{beams}": float((best <= x).mean()) for x in (40, 50, 100)})
        rows.append(row)
    source = load_raster_source(root)
    retr_model, info = train_infonce(model.cfg, root, source, args.minutes, log=wd.log)
    retr = evaluate_retrieval(retr_model, root, source, log=wd.log)
    rows.append({"method": f"InfoNCE flat retrieval ({args.minutes:g} min training, {info['steps']} steps)",
                 **_recalls(retr), "database_cells": retr["database_cells"],
                 "database_build_s": retr["database_build_s"]})
    for r in rows:
        r["data"] = "synthetic"
    return rows


def _recalls(m: dict) -> dict:
    return {k: m[k] for k in ("R@40m", "R@50m", "R@100m", "strict", "median_error_m", "queries")}
