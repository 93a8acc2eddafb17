"""``jzi-bench reference``: jzi against the authors' pipeline (render + encode every view, no KV cache).

Side by side through :mod:`jzi.export.bench_harness`: the reference (PyTorch eager) and each jzi
configuration (ONNX Runtime) run in processes of their own, one query at a time in turn, all on the
same photos; the speed-up is the median over queries of reference time / jzi time for that query.
Both sides' figures are wall time of one call from the JPEG file to the answer.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

from .bench_harness import side_by_side
from .bench_workdir import Workdir

# jzi configurations measured against the reference: (label, encoder precision, decoder precision)
JZI_CONFIGS = (("jzi fp32", "fp32", "fp32"), ("jzi int8", "int8", "fp32"), ("jzi int8 + int8 decoder", "int8", "int8"))


def serve_reference(params: dict):
    """The authors' pipeline on ``params["photos"]`` in turn; one run = one query."""
    import torch

    from jzi.runtime.images import load_rgb
    from jzi.runtime.imagery import open_source

    from .checkpoint import load_checkpoint
    from .reference import AuthorsPipeline

    torch.set_num_threads(params["threads"])
    model, _ = load_checkpoint(params["checkpoint"])
    ref = AuthorsPipeline(model, open_source(params["source"]))
    photos = itertools.cycle(params["photos"])

    def run() -> dict:
        t0 = time.perf_counter()
        out = ref.localize(load_rgb(next(photos)))  # decoding included, as in jzi's figure
        return {"ms": (time.perf_counter() - t0) * 1e3, "stages_s": out["timings"]}

    return run


def serve_jzi(params: dict):
    """jzi's Localizer on ``params["photos"]`` in turn (``mode`` "query"), or the zoom loop alone from a fixed
    street embedding (``mode`` "zoom"); one run = one query."""
    import numpy as np

    from jzi.runtime.localizer import Localizer

    loc = Localizer(params["bundle"], params["store"], backend=params.get("backend", "ort-cpu"),
                    threads=params["threads"])
    photos = itertools.cycle(params["photos"])
    query = np.random.default_rng(0).standard_normal((1, int(loc.manifest["width"]))).astype(np.float32)

    def run() -> dict:
        t0 = time.perf_counter()
        res = loc.localize(next(photos)) if params.get("mode", "query") == "query" else loc.zoom(query)[0]
        ms = (time.perf_counter() - t0) * 1e3
        t = res.timings
        return {"ms": ms, "decoder_steps_ms": t["decoder_steps_ms"], "zoom_ms": t["zoom_ms"],
                "loop_own_ms": t["zoom_ms"] - t["decoder_ms"], "encoder_ms": t.get("encoder_ms")}

    return run


def jzi_contender(bundle: Path, store: Path, photos, threads: int, mode: str = "query") -> tuple[str, dict]:
    return ("jzi.export.bench_reference:serve_jzi",
            {"bundle": str(bundle), "store": str(store), "photos": [str(p) for p in photos], "threads": threads,
             "mode": mode})


def suite_reference(args, wd: Workdir) -> list[dict]:
    """Per query, the authors' pipeline (render, encode 4 views, decoder re-run each step) vs jzi."""
    if not args.source:
        raise SystemExit("jzi-bench: error: the reference suite needs --source IMAGERY (e.g. a synthetic world's "
                         "satellite/ folder from jzi-synth)")
    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        photos = wd.photos(args.queries)
        store = Path(args.tiles) if args.tiles else wd.random_store(wd.bundle(ckpt, "fp32"))
        contenders = {"reference": ("jzi.export.bench_reference:serve_reference",
                                    {"checkpoint": str(ckpt), "source": str(args.source),
                                     "photos": [str(p) for p in photos], "threads": args.threads})}
        for label, precision, decoder in JZI_CONFIGS:
            contenders[label] = jzi_contender(wd.bundle(ckpt, precision, decoder), store, photos, args.threads)
        res = side_by_side(contenders, rounds=args.queries, baseline="reference", threads=args.threads, log=wd.log)
        row = {"preset": preset, "queries": args.queries, "load": res["load"],
               "store": "built from the source" if args.tiles else "random embeddings (speed only)",
               "reference_p50_ms": res["contenders"]["reference"]["p50_ms"]}
        for label, *_ in JZI_CONFIGS:
            c = res["contenders"][label]
            row[f"{label} p50_ms"] = c["p50_ms"]
            row[f"{label} speedup"] = res["speedups"][label]
            row[f"{label} decoder_steps_ms"] = _median_steps(c["runs"])
        rows.append(row)
    return rows


def _median_steps(runs: list[dict]) -> list[float]:
    import numpy as np

    return [float(x) for x in np.median([r["decoder_steps_ms"] for r in runs], axis=0)]
