"""Export benchmarks (issue 4), a script: figures go to benchmarks/RESULTS.md, "## Export (issue 4)".

    python benchmarks/bench_export.py export   [--preset official] [--precision fp32 int8 fp16]
        jzi-export wall time and peak memory (RSS of the process tree, sampled every 50 ms) for a
        random-weight checkpoint of the preset, run as a user runs it.
    python benchmarks/bench_export.py speed    [--preset official] [--threads 1 2] [--repeats 7]
        fp32 vs int8 (and fp16) view encoder from the same checkpoint, side by side: the runs
        alternate between the graphs so that load from other processes hits both alike.
    python benchmarks/bench_export.py agreement --checkpoint best.pt --world WORLD [--split test]
        a trained model on a synthetic world (jzi-synth): localize the split's photos with the fp32
        and the int8 bundle and count how often they reach the same final cell.

Add ``--json`` for machine-readable output; everything else prints one Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def random_checkpoint(preset: str, folder: Path) -> Path:
    from jzi.export.bench_workdir import Workdir

    return Workdir(folder, threads=1).checkpoint(preset)


def run_measured(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; returns (wall seconds, peak RSS of it and its children in GB, the process)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    return seconds, peak / 1024**3, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def bench_export(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint(args.preset, Path(tmp))
        for precision in args.precision:
            out = Path(tmp) / f"bundle-{precision}"
            cmd = [sys.executable, "-m", "jzi.export.cli", str(ckpt), "-o", str(out), "--precision", precision, "-q"]
            seconds, peak_gb, proc = run_measured(cmd)
            if proc.returncode != 0:
                raise SystemExit(f"bench_export: jzi-export failed: {proc.stderr.strip()}")
            man = json.loads((out / "manifest.json").read_text())
            par = man["parity"]
            rows.append({"preset": args.preset, "precision": precision, "seconds": round(seconds, 1),
                         "peak_rss_gb": round(peak_gb, 2),
                         "bundle_mb": round(sum(e["bytes"] for e in man["files"].values()) / 1e6, 1),
                         "view_encoder_rel": par["view_encoder"]["max_rel"],
                         "street_encoder_rel": par["street_encoder"]["max_rel"],
                         "decoder_logits_abs": par["decoder_rollouts"]["logits"]["max_abs"],
                         "decoder_paths": par["decoder_rollouts"]["path_agreement"],
                         "end_to_end_paths": par["end_to_end"]["path_agreement"],
                         "end_to_end_queries": par["end_to_end"]["queries"]})
    return rows


def bench_speed(args) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from jzi.export.checkpoint import load_checkpoint
    from jzi.export.onnx_export import export_view_encoder, prepare_for_export, to_fp16, to_int8

    def runtime_session(path, threads):  # as the runtime's ort-cpu backend opens them (pre-packing on)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = random_checkpoint(args.preset, tmp)
        model = prepare_for_export(load_checkpoint(ckpt)[0])
        s = model.cfg.image_size
        fp32 = export_view_encoder(model)
        graphs = {"fp32": fp32, "int8": to_int8(fp32, tmp)}
        if args.fp16:
            graphs["fp16"] = to_fp16(fp32)
        for name, proto in graphs.items():
            onnx.save(proto, tmp / f"{name}.onnx")
        del graphs, fp32, model
        images = np.random.default_rng(0).integers(0, 256, (args.batch, s, s, 3), dtype=np.uint8)
        names = ["fp32", "int8"] + (["fp16"] if args.fp16 else [])
        for threads in args.threads:
            sessions = {n: runtime_session(tmp / f"{n}.onnx", threads) for n in names}
            for sess in sessions.values():  # warm-up: first runs allocate and pick kernels
                sess.run(None, {"images": images})
            times = {n: [] for n in names}
            for _ in range(args.repeats):
                for n in names:
                    t = time.perf_counter()
                    sessions[n].run(None, {"images": images})
                    times[n].append((time.perf_counter() - t) / args.batch)
            base = statistics.median(times["fp32"])
            for n in names:
                med = statistics.median(times[n])
                rows.append({"preset": args.preset, "graph": f"view_encoder {n}", "threads": threads,
                             "batch": args.batch, "median_s_per_image": round(med, 4),
                             "min_s_per_image": round(min(times[n]), 4), "speedup_vs_fp32": round(base / med, 2)})
    return rows


def _test_photos(world: Path, split: str) -> tuple[list[Path], np.ndarray]:
    with open(world / "metadata" / f"{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    photos = [world / "streetview" / "images" / f"{r['image_id']}_undistorted.jpg" for r in rows]
    truth = np.array([[float(r["latitude"]), float(r["longitude"])] for r in rows])
    return photos, truth


def bench_agreement(args) -> list[dict]:
    from jzi.export.onnx_export import export_bundle
    from jzi.runtime.geometry import distance_m
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import build_store

    photos, truth = _test_photos(Path(args.world), args.split)
    source = Path(args.world) / "satellite"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results, stores = {}, {}
        for precision in ("fp32", "int8"):
            bundle, _ = export_bundle(args.checkpoint, tmp / f"b-{precision}", precision=precision)
            stores[precision] = build_store(tmp / f"{precision}.jzt", bundle, source, backend="ort-cpu",
                                            threads=args.threads, dtype="float16", progress=False)
            results[precision] = bundle
        paths = {}
        # int8 queries against the fp32-built store (a store fits every precision of the same weights)
        # and against a store the int8 encoder built itself
        for name, bundle, store in (("fp32", results["fp32"], stores["fp32"]),
                                    ("int8 + fp32 store", results["int8"], stores["fp32"]),
                                    ("int8 + int8 store", results["int8"], stores["int8"])):
            loc = Localizer(bundle, store, backend="ort-cpu", threads=args.threads)
            out = []
            for start in range(0, len(photos), 16):
                out += loc.localize_batch(photos[start:start + 16])
            paths[name] = (np.array([r.path for r in out]), np.array([[r.latitude, r.longitude] for r in out]))
    ref_paths = paths["fp32"][0]
    rows = []
    for name, (p, latlon) in paths.items():
        err = distance_m(latlon, truth)
        rows.append({"run": name, "queries": len(photos), "same_final_cell_as_fp32": float((p == ref_paths).all(1).mean()),
                     "R@40m": float((err <= 40).mean()), "R@100m": float((err <= 100).mean())})
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_export", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("export", help="jzi-export time and peak memory")
    e.add_argument("--preset", default="official")
    e.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "fp16", "int8"])
    s = sub.add_parser("speed", help="fp32 vs int8 view encoder, side by side")
    s.add_argument("--preset", default="official")
    s.add_argument("--threads", type=int, nargs="+", default=[2])
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--fp16", action="store_true", help="also time the fp16 graph (slow on CPUs)")
    a = sub.add_parser("agreement", help="trained model: int8 vs fp32 final cells on a synthetic world")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--world", required=True, help="a jzi-synth world folder")
    a.add_argument("--split", default="test")
    a.add_argument("--threads", type=int, default=2)
    for sp in (e, s, a):
        sp.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = {"export": bench_export, "speed": bench_speed, "agreement": bench_agreement}[args.what](args)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
