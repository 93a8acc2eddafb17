"""Runtime benchmarks (issue 5): parity with PyTorch, beam search, per-query overhead, memory, store opening.

    python benchmarks/bench_runtime.py parity   --demo demo-out          # trained tiny model, synthetic test split
    python benchmarks/bench_runtime.py overhead --work bench-out         # official preset, random weights
    python benchmarks/bench_runtime.py memory   --work bench-out         # jzi-run peak RSS, 4- vs 6-step stores
    python benchmarks/bench_runtime.py all --demo demo-out --work bench-out

Each section prints a JSON record (also written to WORK/bench_runtime_<section>.json). Official-size
bundles are exported with random weights (the overhead and memory figures do not depend on the
weights); the 6-step store for a 160 km region is filled with random embeddings.
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
from dataclasses import replace
from pathlib import Path

import numpy as np

from jzi.runtime.geometry import Region, distance_m
from jzi.runtime.localizer import Localizer
from jzi.runtime.tiles import TileStore, write_store

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
# official-size bundles with random weights
# ---------------------------------------------------------------------------------------------
def official_bundle(work: Path, steps: int = 4) -> Path:
    """An fp32 bundle of the official preset (random weights) for a 10 km / 4-step or 160 km / 6-step region."""
    out = work / f"official_{steps}step_bundle"
    if (out / "manifest.json").is_file():
        return out
    import torch

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.config import get_preset
    from jzi.export.model import JustZoomIn
    from jzi.export.onnx_export import export_bundle

    region = Region.default() if steps == 4 else replace(Region.default(), steps=steps, size_m=39.0625 * 4 ** steps)
    torch.manual_seed(0)
    ckpt = work / f"official_{steps}step.pt"
    save_checkpoint(JustZoomIn(get_preset("official", region=region)).eval(), ckpt)
    export_bundle(ckpt, out, precision="fp32", force=True, log=lambda s: print("   " + s, flush=True))
    ckpt.unlink()
    return out


def random_store(work: Path, bundle: Path, dtype: str = "float16") -> Path:
    """A store of random embeddings with the bundle's geometry and encoder id."""
    from jzi.runtime.bundle import load_manifest

    man = load_manifest(bundle, verify=False)
    region = Region.from_dict(man["region"])
    out = work / f"random_{region.steps}step_{dtype}.jzt"
    if (out / "tiles.json").is_file():
        return out
    rng = np.random.default_rng(0)
    write_store(out, region, int(man["width"]), man["encoder_id"],
                lambda rows: (rng.standard_normal((len(rows), int(man["width"])), dtype=np.float32), None),
                dtype=dtype, batch=1 << 15, meta={"source": "random embeddings (benchmark)"}, force=True)
    return out


def bench_overhead(work: Path, queries: int, loops: int, threads: int) -> dict:
    bundle = official_bundle(work)
    store = random_store(work, bundle)
    loc = Localizer(bundle, store, backend="ort-cpu", threads=threads)
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (480, 960, 3), dtype=np.uint8) for _ in range(queries)]
    loc.localize(photos[0])  # warm-up
    full = [loc.localize(p).timings for p in photos]
    # the zoom loop alone (no encoder), many times, for a tight figure
    query = rng.standard_normal((1, int(loc.manifest["width"])), dtype=np.float32)
    for _ in range(10):
        loc.zoom(query)
    zoom = [loc.zoom(query)[0].timings for _ in range(loops)]

    med = lambda xs: round(statistics.median(xs), 4)  # noqa: E731
    total = med([t["total_ms"] for t in full])
    encoder = med([t["encoder_ms"] for t in full])
    pre = med([t["preprocess_ms"] + t["read_ms"] for t in full])
    all_but_encoder = med([t["total_ms"] - t["encoder_ms"] - t["preprocess_ms"] - t["read_ms"] for t in full])
    decoder = med([t["decoder_ms"] for t in zoom])
    runtime_only = med([t["zoom_ms"] - t["decoder_ms"] for t in zoom])
    return _save(work, "overhead", {
        "preset": "official (random weights)", "backend": loc.backend.describe(), "queries": queries,
        "zoom_loops": loops, "photo_px": [480, 960],
        "median_ms": {"query_total": total, "encoder": encoder, "preprocess_and_decode": pre,
                      "everything_but_encoder_and_preprocess": all_but_encoder,
                      "decoder_graph_4_steps": decoder, "decoder_step": med([s for t in zoom for s in t["decoder_steps_ms"]]),
                      "tile_reads_4_steps": med([t["tiles_ms"] for t in zoom]),
                      "runtime_overhead_excluding_graph_calls": runtime_only},
        "share_of_query_%": {"everything_but_encoder_and_preprocess": round(100 * all_but_encoder / total, 3),
                             "runtime_overhead_excluding_graph_calls": round(100 * runtime_only / total, 3)},
    })


# ---------------------------------------------------------------------------------------------
# memory and store opening
# ---------------------------------------------------------------------------------------------
def peak_rss_mb(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Peak resident memory of a fresh child process (ru_maxrss of the waited child)."""
    code = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'rc': r.returncode, "
            "'err': r.stderr[-500:]}))")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout)
    if rec["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {rec['err']}")
    return rec["rss_kb"] / 1024, rec


def open_ms(store: Path, repeats: int = 20) -> float:
    TileStore(store)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        TileStore(store)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def bench_memory(work: Path, threads: int) -> dict:
    photo = work / "query.jpg"
    if not photo.exists():
        import cv2

        cv2.imwrite(str(photo), np.random.default_rng(2).integers(0, 256, (480, 960, 3), dtype=np.uint8))
    out = {"bundle_precision": "fp32", "preset": "official (random weights)"}
    for steps in (4, 6):
        bundle = official_bundle(work, steps)
        store = random_store(work, bundle)
        cmd = [sys.executable, "-m", "jzi.runtime.run_cli", "--engine", str(bundle), "--tiles", str(store), str(photo),
               "--threads", str(threads)]
        rss, _ = peak_rss_mb(cmd)
        size = sum(f.stat().st_size for f in store.iterdir())
        out[f"{steps}_step"] = {"region_km": Region.from_dict(TileStore(store).meta["region"]).size_m / 1000,
                               "store_views": TileStore(store).total_views, "store_bytes": size,
                               "jzi_run_peak_rss_mb": round(rss, 1), "open_store_ms": open_ms(store)}
    out["rss_difference_mb"] = round(out["6_step"]["jzi_run_peak_rss_mb"] - out["4_step"]["jzi_run_peak_rss_mb"], 1)
    return _save(work, "memory", out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=("parity", "overhead", "memory", "all"))
    p.add_argument("--demo", type=Path, default=Path("demo-out"), help="folder made by make demo (parity)")
    p.add_argument("--work", type=Path, default=Path("bench-out"), help="where official bundles and stores go")
    p.add_argument("--queries", type=int, default=10, help="full queries for the overhead figure")
    p.add_argument("--loops", type=int, default=300, help="zoom loops for the overhead figure")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.section in ("parity", "all"):
        bench_parity(a.demo, a.work)
    if a.section in ("overhead", "all"):
        bench_overhead(a.work, a.queries, a.loops, a.threads)
    if a.section in ("memory", "all"):
        bench_memory(a.work, a.threads)
    print(f"peak RSS of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
