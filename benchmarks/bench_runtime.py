"""Runtime benchmarks (issue 5): parity with PyTorch, beam search, per-query overhead, memory, store opening.

    python benchmarks/bench_runtime.py parity   --demo demo-out          # trained tiny model, synthetic test split
    python benchmarks/bench_runtime.py overhead --work bench-out         # official preset, random weights
    python benchmarks/bench_runtime.py memory   --work bench-out         # jzi-run peak RSS, 4- vs 6-step stores
    python benchmarks/bench_runtime.py all --demo demo-out --work bench-out

Each section prints a JSON record (also written to WORK/bench_runtime_<section>.json). Official-size
bundles are exported with random weights (the overhead and memory figures do not depend on the
weights); stores are filled with random embeddings (6 steps: a 160 km region, about 1.7 GB). The
random-weight artefacts come from ``jzi.export.bench_workdir.Workdir``, so jzi-bench and this script share
them when given the same folder (``--work`` here, ``--workdir`` there).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jzi.runtime.geometry import distance_m
from jzi.runtime.localizer import Localizer
from jzi.runtime.tiles import TileStore

RECALL_M = (40, 50, 100)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"


def _save(work: Path, name: str, record: dict) -> dict:
    record = {"section": name, "machine": machine(), **record}
    work.mkdir(parents=True, exist_ok=True)
    (work / f"bench_runtime_{name}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1), flush=True)
    return record


# ---------------------------------------------------------------------------------------------
# parity and beam search on the synthetic test split (the demo's trained tiny model)
# ---------------------------------------------------------------------------------------------
def torch_greedy_paths(checkpoint, world: Path, photos: list[np.ndarray]) -> np.ndarray:
    """The PyTorch model end to end: its own embeddings of the street photos and of every view."""
    import torch

    from jzi.export.checkpoint import load_checkpoint
    from jzi.export.model import greedy_from_embeddings, normalize, split_street
    from jzi.runtime.images import street_input
    from jzi.runtime.imagery import open_source

    model, _ = load_checkpoint(checkpoint)
    region = model.cfg.zoom
    views = open_source(world / "satellite").render_region(region)
    with torch.no_grad():
        table = torch.cat([model.encode_views(normalize(torch.from_numpy(views[i:i + 256])))
                           for i in range(0, len(views), 256)])
        paths = []
        for i in range(0, len(photos), 64):
            x = torch.from_numpy(np.stack([street_input(p, region.view_px) for p in photos[i:i + 64]]))
            g = model.encode_street(split_street(normalize(x)))

            def view_fn(path):
                k = path.shape[1]
                rows = region.level_offset(k) + (region.path_index(path.numpy()) if k else np.zeros(len(path), np.int64))
                return table[torch.from_numpy(np.asarray(rows))]

            paths.append(greedy_from_embeddings(model.decoder, g, view_fn, region.steps)[0].numpy())
    return np.concatenate(paths)


def recalls(pred_latlon: np.ndarray, truth: np.ndarray) -> dict:
    err = distance_m(pred_latlon, truth)
    return {f"R@{m}m": round(100 * float(np.mean(err <= m)), 2) for m in RECALL_M} | {
        "median_error_m": round(float(np.median(err)), 1)}


def bench_parity(demo: Path, work: Path) -> dict:
    import csv

    from jzi.runtime.images import read_image

    world, bundle, checkpoint = demo / "world", demo / "bundle", demo / "train" / "best.pt"
    rows = list(csv.DictReader(open(world / "metadata" / "test.csv")))
    photos = [read_image(world / "streetview" / "images" / f"{r['image_id']}_undistorted.jpg") for r in rows]
    truth = np.array([[float(r["latitude"]), float(r["longitude"])] for r in rows])
    ref = torch_greedy_paths(checkpoint, world, photos)

    from jzi.runtime.tiles import build_store

    stores = {}
    for dtype in ("float32", "float16"):
        stores[dtype] = work / f"demo_store_{dtype}.jzt"
        if not stores[dtype].exists():
            build_store(stores[dtype], bundle, world / "satellite", dtype=dtype, batch=256, progress=False)
    out = {"queries": len(photos), "bundle": str(bundle), "checkpoint": str(checkpoint)}
    for dtype, store in stores.items():
        loc = Localizer(bundle, store, backend="ort-cpu")
        greedy = [r for i in range(0, len(photos), 16) for r in loc.localize_batch(photos[i:i + 16])]
        paths = np.array([r.path for r in greedy])
        out[f"greedy_path_agreement_{dtype}_store_%"] = round(100 * float((paths == ref).all(axis=1).mean()), 2)
        if dtype == "float16":
            beam = [r for i in range(0, len(photos), 16) for r in loc.localize_batch(photos[i:i + 16], beams=4)]
            greedy_ll = np.array([[r.latitude, r.longitude] for r in greedy])
            beam_ll = np.array([[r.latitude, r.longitude] for r in beam])
            out["greedy_R@1"] = recalls(greedy_ll, truth)
            out["beam4_R@1"] = recalls(beam_ll, truth)
            best_of_4 = np.array([min(distance_m([c.latitude, c.longitude], t) for c in r.candidates)
                                  for r, t in zip(beam, truth)])
            out["beam4_R@4"] = {f"R@{m}m": round(100 * float(np.mean(best_of_4 <= m)), 2) for m in RECALL_M}
    return _save(work, "parity", out)


# ---------------------------------------------------------------------------------------------
# the official preset with random weights: artefacts shared with jzi-bench (same --work folder)
# ---------------------------------------------------------------------------------------------
def workdir(work: Path, threads: int):
    from jzi.export.bench_workdir import Workdir

    return Workdir(work, threads, log=lambda s: print("   " + s, flush=True))


PRESET = "official"  # --preset tiny gives a quick dry run of the official-size sections


def official(wd, steps: int = 4) -> tuple[Path, Path]:
    """(fp32 bundle, random fp16 store) of the preset: 10 km / 4 steps or 160 km / 6 steps, 39 m cells."""
    bundle = wd.bundle(wd.checkpoint(PRESET, steps), "fp32")
    return bundle, wd.random_store(bundle)


def bench_overhead(wd, work: Path, queries: int, loops: int, threads: int) -> dict:
    from jzi.export.bench_latency import run_localizer

    bundle, store = official(wd)
    full = run_localizer(bundle, store, wd.photos(queries), threads)
    # the zoom loop alone (no encoder), many times: the runtime's own cost next to the decoder graph's
    loc = Localizer(bundle, store, backend="ort-cpu", threads=threads)
    query = np.random.default_rng(1).standard_normal((1, int(loc.manifest["width"])), dtype=np.float32)
    for _ in range(10):
        loc.zoom(query)
    zoom = [loc.zoom(query)[0].timings for _ in range(loops)]
    med = lambda xs: round(statistics.median(xs), 4)  # noqa: E731
    decoder = med([t["decoder_ms"] for t in zoom])
    runtime_only = med([t["zoom_ms"] - t["decoder_ms"] for t in zoom])
    total = full["total_ms"]["p50"]
    return _save(work, "overhead", {
        "preset": f"{PRESET} (random weights)", "backend": loc.backend.describe(), "photo_px": [480, 960],
        "full_queries": full, "zoom_loops": loops,
        "zoom_loop_median_ms": {"decoder_graph_4_steps": decoder, "tile_reads_4_steps": med([t["tiles_ms"] for t in zoom]),
                                "runtime_overhead_excluding_graph_calls": runtime_only},
        "share_of_query_%": {"everything_but_encoder_and_preprocess": round(full["overhead_pct"], 3),
                             "runtime_overhead_excluding_graph_calls": round(100 * runtime_only / total, 3)},
    })


# ---------------------------------------------------------------------------------------------
# memory and store opening
# ---------------------------------------------------------------------------------------------
def jzi_run_peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory (VmHWM) of a fresh process running jzi-run with ``args``.

    VmHWM is the process's own high-water mark; ru_maxrss of a child can carry its parent's figure.
    """
    code = ("import sys\nfrom jzi.runtime.run_cli import main\nrc = main(sys.argv[1:])\n"
            "from jzi.export.bench_harness import peak_rss_mb\n"  # after the run: it must not count
            "print('VMHWM_MB', peak_rss_mb(), rc, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("VMHWM_MB")]
    if out.returncode != 0 or not line or line[0].split()[2] != "0":
        raise RuntimeError(f"jzi-run {' '.join(args)} failed: {out.stderr[-500:]}")
    return float(line[0].split()[1])


def open_ms(store: Path, repeats: int = 20) -> float:
    TileStore(store)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        TileStore(store)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def bench_memory(wd, work: Path, threads: int) -> dict:
    photo = wd.photos(1)[0]
    out = {"bundle_precision": "fp32", "preset": f"{PRESET} (random weights)", "store": "random fp16 embeddings"}
    for steps in (4, 6):
        bundle, store = official(wd, steps)
        rss = jzi_run_peak_rss_mb(["--engine", str(bundle), "--tiles", str(store), str(photo), "--threads", str(threads)])
        meta = TileStore(store)
        out[f"{steps}_step"] = {"region_km": meta.region.size_m / 1000, "store_views": meta.total_views,
                               "store_bytes": sum(f.stat().st_size for f in store.iterdir()),
                               "jzi_run_peak_rss_mb": round(rss, 1), "open_store_ms": open_ms(store)}
    out["rss_difference_mb"] = round(out["6_step"]["jzi_run_peak_rss_mb"] - out["4_step"]["jzi_run_peak_rss_mb"], 1)
    return _save(work, "memory", out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sections", nargs="+", choices=("parity", "overhead", "memory", "all"))
    p.add_argument("--demo", type=Path, default=Path("demo-out"), help="folder made by make demo (parity)")
    p.add_argument("--work", type=Path, default=Path("bench-out"), help="where official bundles and stores go")
    p.add_argument("--queries", type=int, default=10, help="full queries for the overhead figure")
    p.add_argument("--loops", type=int, default=300, help="zoom loops for the overhead figure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="official", choices=("official", "small", "tiny"),
                   help="model size for overhead/memory (official; tiny for a quick dry run)")
    a = p.parse_args(argv)
    global PRESET
    PRESET = a.preset
    if {"parity", "all"} & set(a.sections):
        bench_parity(a.demo, a.work)
    if {"overhead", "all"} & set(a.sections):
        bench_overhead(workdir(a.work, a.threads), a.work, a.queries, a.loops, a.threads)
    if {"memory", "all"} & set(a.sections):
        bench_memory(workdir(a.work, a.threads), a.work, a.threads)
    print(f"peak RSS of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
