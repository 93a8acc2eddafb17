"""``jzi-bench accuracy``: synthetic test split, PyTorch vs runtime (fp32/int8, fp16 store, beam 4) vs InfoNCE retrieval."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_workdir import Workdir

BEAMS = 4


def suite_accuracy(args, wd: Workdir) -> list[dict]:
    """Synthetic test split: PyTorch, the runtime (fp32/int8, fp32/fp16 store, greedy/beam 4), InfoNCE retrieval."""
    from jzi.runtime.geometry import distance_m
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import build_store

    from .checkpoint import load_checkpoint
    from .data import image_path, read_split
    from .onnx_export import decisive_decisions, decisive_rollouts
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
    # (bundle precision, store dtype, precision of the bundle that built the store, beams)
    variants = (("fp32", "float32", "fp32", 1), ("fp32", "float16", "fp32", 1), ("int8", "float16", "fp32", 1),
                ("int8", "float16", "int8", 1), ("fp32", "float16", "fp32", BEAMS))
    stores = {}
    for _, dtype, builder, _ in variants:
        stores[builder, dtype] = wd.root / f"{ckpt.stem}-{builder}-{dtype}.jzt"
        if not (stores[builder, dtype] / "tiles.json").exists():
            build_store(stores[builder, dtype], wd.bundle(ckpt, builder), root / "satellite", threads=args.threads,
                        dtype=dtype, force=True, progress=False)
    fp32_paths = decisive = fp32_logits = None
    for precision, dtype, builder, beams in variants:
        loc = Localizer(wd.bundle(ckpt, precision), stores[builder, dtype], backend="ort-cpu", threads=args.threads)
        res = [loc.localize(p, beams=beams) for p in photos]
        paths = np.array([r.path for r in res])
        if fp32_paths is None:  # the first variant, fp32 bundle and store: the reference
            fp32_logits = reference_logits(loc, photos)
            fp32_paths, decisive = paths, decisive_rollouts(fp32_logits)
        decisions, same_decisions = decisive_decisions(paths, fp32_paths, fp32_logits)
        m = path_metrics(paths, truth, latlon, region)
        row = {"method": f"jzi {precision} bundle, {dtype} store built by the {builder} bundle, "
                         + ("greedy" if beams == 1 else f"beam {beams} (top candidate)"),
               **_recalls(m), "same_path_as_pytorch": float((paths == torch_paths).all(1).mean()),
               "same_final_cell_as_fp32": float((paths == fp32_paths).all(1).mean()),
               "same_final_cell_as_fp32_decisive": float((paths == fp32_paths).all(1)[decisive].mean()),
               "decisive_queries": int(decisive.sum()),
               "same_decision_as_fp32_decisive": same_decisions, "decisive_decisions": decisions}
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


def reference_logits(loc, photos) -> np.ndarray:
    """[N, S, A]: every step's logits of the greedy rollouts through ``loc`` (the decisive-gate reference)."""
    from .bench_agreement import greedy_logits, street_queries

    return greedy_logits(loc, street_queries(loc, photos))[1]


def _recalls(m: dict) -> dict:
    return {k: m[k] for k in ("R@40m", "R@50m", "R@100m", "strict", "median_error_m", "queries")}
