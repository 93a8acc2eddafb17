"""``jzi-bench latency``: per-stage latency and p50/p90/p99 per preset and backend (ORT fp32/int8, PyTorch eager)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bench_workdir import Workdir


def percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))}


def run_localizer(bundle: Path, store: Path, photos, threads: int, backend: str = "ort-cpu", warmup: int = 2) -> dict:
    from jzi.runtime.localizer import Localizer

    loc = Localizer(bundle, store, backend=backend, threads=threads)
    for p in photos[:warmup]:
        loc.localize(p)
    return summarize([loc.localize(p).timings for p in photos])


def summarize(rows: list[dict]) -> dict:
    """Per-stage medians and end-to-end percentiles of per-query timings (the Localizer's keys)."""
    total = np.array([r["total_ms"] for r in rows])
    encoder = np.array([r["encoder_ms"] for r in rows])
    # everything in a query except the encoder call, image decoding and preprocessing
    overhead = total - encoder - np.array([r["read_ms"] + r["preprocess_ms"] for r in rows])
    tiles = [r["tiles_ms"] for r in rows if r.get("tiles_ms") is not None]
    return {
        "decode_ms": float(np.median([r["read_ms"] for r in rows])),
        "preprocess_ms": float(np.median([r["preprocess_ms"] for r in rows])),
        "encoder_ms": float(np.median(encoder)),
        "decoder_step_ms": [float(x) for x in np.median([r["decoder_steps_ms"] for r in rows], axis=0)],
        "tiles_ms": float(np.median(tiles)) if tiles else None,
        "overhead_ms": float(np.median(overhead)),
        "overhead_pct": float(np.median(overhead / total * 100)),
        "total_ms": percentiles(total),
        "queries": len(rows),
    }


def run_torch_eager(checkpoint: Path, store: Path, photos, threads: int, warmup: int = 2) -> dict:
    """The same loop as the runtime's, in PyTorch eager (tile rows from the same store)."""
    import torch

    from jzi.runtime.images import load_rgb, street_input
    from jzi.runtime.tiles import TileStore

    from .checkpoint import load_checkpoint
    from .model import normalize, split_street

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    st = TileStore(store)
    region, s = st.region, model.cfg.image_size
    dec = model.decoder

    @torch.inference_mode()
    def one(path):
        t = [time.perf_counter()]
        rgb = load_rgb(path)
        t.append(time.perf_counter())
        x = split_street(normalize(torch.from_numpy(street_input(rgb, s))[None]))
        t.append(time.perf_counter())
        g = model.encode_street(x)
        t.append(time.perf_counter())
        keys, values = dec.empty_cache(1)
        prev, idx, steps = torch.zeros(1, dtype=torch.long), 0, []
        for k in range(region.steps):
            view = torch.from_numpy(np.asarray(st.embeddings[region.level_offset(k) + idx], np.float32))[None]
            t0 = time.perf_counter()
            logits, keys, values = dec.step(g, view, prev, torch.tensor(k), keys, values)
            prev = logits.argmax(-1)
            steps.append((time.perf_counter() - t0) * 1e3)
            idx = idx * region.n_actions + int(prev)
        t.append(time.perf_counter())
        ms = np.diff(t) * 1e3
        return {"read_ms": ms[0], "preprocess_ms": ms[1], "encoder_ms": ms[2], "decoder_steps_ms": steps,
                "tiles_ms": None, "total_ms": (t[-1] - t[0]) * 1e3}

    for p in photos[:warmup]:
        one(p)
    return summarize([one(p) for p in photos])


def suite_latency(args, wd: Workdir) -> list[dict]:
    from jzi.runtime.backends import available_backends
    from jzi.runtime.bundle import load_manifest

    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        photos = wd.photos(args.queries)
        fp32 = wd.bundle(ckpt, "fp32")
        store = wd.random_store(fp32)
        for precision in ("fp32", "int8"):
            bundle = wd.bundle(ckpt, precision)
            status = available_backends(load_manifest(bundle, verify=False))
            for backend, why in status.items():
                if backend == "tensorrt" and precision == "int8":
                    continue  # engines come from the fp32/fp16 ONNX
                if why != "ok":
                    rows.append({"preset": preset, "backend": f"{backend} {precision}", "skipped": why})
                    continue
                wd.log(f"latency: {preset} {backend} {precision}")
                rows.append({"preset": preset, "backend": f"{backend} {precision}",
                             **run_localizer(bundle, store, photos, args.threads, backend)})
        wd.log(f"latency: {preset} torch eager")
        rows.append({"preset": preset, "backend": "torch-eager fp32",
                     **run_torch_eager(ckpt, store, photos, args.threads)})
    return rows


def suite_decoder(args, wd: Workdir) -> list[dict]:
    """The zoom loop alone (fixed street embedding, no encoder) with the fp32 and the int8 decoder, side by
    side in separate processes: per-step decoder time and the loop's own work (everything but the steps)."""
    from .bench_harness import side_by_side
    from .bench_reference import jzi_contender

    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        store = wd.random_store(wd.bundle(ckpt, "fp32"))
        photos = wd.photos(1)
        contenders = {f"{dec} decoder": jzi_contender(wd.bundle(ckpt, "int8", dec), store, photos, args.threads,
                                                      mode="zoom") for dec in ("fp32", "int8")}
        res = side_by_side(contenders, rounds=args.repeats, baseline="fp32 decoder", threads=args.threads,
                           log=wd.log)
        row = {"preset": preset, "rounds": args.repeats, "load": res["load"],
               "int8 / fp32 zoom time": res["ratios"]["int8 decoder"]}
        for name, c in res["contenders"].items():
            steps = np.array([r["decoder_steps_ms"] for r in c["runs"]])
            row[f"{name} zoom_ms p50"] = c["p50_ms"]
            row[f"{name} step_ms median"] = [float(x) for x in np.median(steps, axis=0)]
            row[f"{name} step_ms best"] = [float(x) for x in steps.min(axis=0)]
            row[f"{name} loop_own_ms median"] = float(np.median([r["loop_own_ms"] for r in c["runs"]]))
        rows.append(row)
    return rows


def suite_query(args, wd: Workdir) -> list[dict]:
    """Whole queries (JPEG to answer) with the fp32, int8 and int8 + int8-decoder bundles, side by side in
    separate processes: p50 and per-stage medians of each, and each one's time over fp32's per round."""
    from .bench_harness import side_by_side
    from .bench_reference import JZI_CONFIGS, jzi_contender

    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        store = Path(args.tiles) if args.tiles else wd.random_store(wd.bundle(ckpt, "fp32"))
        photos = wd.photos(args.queries)
        contenders = {label: jzi_contender(wd.bundle(ckpt, precision, dec), store, photos, args.threads)
                      for label, precision, dec in JZI_CONFIGS}
        baseline = JZI_CONFIGS[0][0]
        res = side_by_side(contenders, rounds=args.queries, baseline=baseline, threads=args.threads, log=wd.log)
        row = {"preset": preset, "queries": args.queries, "load": res["load"]}
        for name, c in res["contenders"].items():
            runs = c["runs"]
            row[f"{name} p50_ms"] = c["p50_ms"]
            row[f"{name} p90_ms"] = c["p90_ms"]
            row[f"{name} encoder_ms median"] = float(np.median([r["encoder_ms"] for r in runs]))
            row[f"{name} zoom_ms median"] = float(np.median([r["zoom_ms"] for r in runs]))
            if name != baseline:
                row[f"{name} / {baseline}"] = res["ratios"][name]
        rows.append(row)
    return rows
