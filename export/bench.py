"""``jzi-bench``: latency suites, side by side with the baselines jzi is meant to beat.

    jzi-bench latency    per-stage latency and p50/p90/p99 per preset and backend (ORT fp32/int8, PyTorch eager)
    jzi-bench decoder    the zoom loop alone with the fp32 and the int8 decoder, side by side (step ms, loop's own work)
    jzi-bench query      whole queries with the fp32, int8 and int8 + int8-decoder bundles, side by side
    jzi-bench reference  jzi against the authors' pipeline (render + encode every view, no KV cache), same queries
    jzi-bench kvcache    the decoder loop with the KV cache against full recompute, at 4 and 8 steps
    jzi-bench scale      latency and peak memory against region size (4/5/6 steps at 39 m cells) next to flat
                         (exhaustive) and approximate (FAISS HNSW, IVF-PQ) retrieval
    jzi-bench retrieval  the retrieval side of the scale suite alone: build time, memory, latency, recall@1
    jzi-bench throughput tile builds against the bare view encoder (needs --source), jzi-run photos/s by --batch
    jzi-bench accuracy   synthetic test split: PyTorch vs runtime (fp32/int8, fp16 store, beam 4) vs InfoNCE retrieval
    jzi-bench agreement  a trained model's decisive decisions under reduced precision (int8 decoder, int8 encoders)
    jzi-bench gpu        on a CUDA machine: TensorRT engines, gpu-marked tests, ORT-CUDA / ORT-TRT / TensorRT
                         latency and throughput, one JSON + Markdown table naming the card

Each suite prints a table; ``--json`` writes every figure with the machine and versions, ``--plots``
draws PNGs. Models without ``--checkpoint`` have random weights (fine for speed and memory, say nothing
about accuracy); the accuracy figures come from ``jzi-eval`` and ``jzi-run`` on a trained model.
Artifacts (checkpoints, bundles, stores, photos) are cached in ``--workdir`` between runs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PRESET_CHOICES = ("tiny", "small", "official")

# suite name -> "module:function" (imported only when the suite runs); each suite lives in its own file
SUITES = {
    "latency": "bench_latency:suite_latency",
    "decoder": "bench_latency:suite_decoder",
    "query": "bench_latency:suite_query",
    "reference": "bench_reference:suite_reference",
    "kvcache": "bench_kvcache:suite_kvcache",
    "scale": "bench_scale:suite_scale",
    "retrieval": "bench_scale:suite_retrieval",
    "throughput": "bench_throughput:suite_throughput",
    "accuracy": "bench_accuracy:suite_accuracy",
    "agreement": "bench_agreement:suite_agreement",
    "gpu": "bench_gpu:suite_gpu",
}


def load_suite(name: str):
    module, func = SUITES[name].split(":")
    return getattr(importlib.import_module(f"jzi.export.{module}"), func)


# ---- reporting ----------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    import onnxruntime

    info = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d")}
    try:  # the installed version, without importing torch (2 s and 0.2 GB) into a torch-free suite
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    except OSError:
        pass
    return info


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, dict):
        return " ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n== {name} ==")
    for row in rows:
        print("  " + "  ".join(f"{k}: {_fmt(v)}" for k, v in row.items()))


def plot(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    lat = [r for r in results.get("latency", []) if "total_ms" in r]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['preset']}\n{r['backend']}" for r in lat]
        enc = [r["encoder_ms"] for r in lat]
        rest = [r["total_ms"]["p50"] - r["encoder_ms"] for r in lat]
        ax.bar(labels, enc, label="encoder")
        ax.bar(labels, rest, bottom=enc, label="everything else")
        ax.set_ylabel("ms per query (p50)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("jzi query latency by backend")
        fig.tight_layout()
        made.append(folder / "latency.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    scale = results.get("scale", [])
    if scale:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        km = [r["region_km"] for r in scale]
        a1.plot(km, [r["jzi"].get("total_ms", np.nan) for r in scale], "o-", label="jzi (zoom)")
        a1.plot(km, [r.get("flat_query_ms", np.nan) for r in scale], "s--", label="flat retrieval")
        a2.plot(km, [r["jzi"].get("peak_rss_mb", np.nan) for r in scale], "o-", label="jzi (zoom)")
        a2.plot(km, [r["flat"].get("peak_rss_mb", np.nan) for r in scale], "s--", label="flat retrieval")
        for a, yl in ((a1, "ms per query"), (a2, "peak memory (MB)")):
            a.set_xscale("log")
            a.set_xlabel("region side (km), 39 m cells")
            a.set_ylabel(yl)
            a.legend()
        a2.set_yscale("log")
        fig.suptitle("scale: jzi vs flat retrieval (random weights/embeddings)")
        fig.tight_layout()
        made.append(folder / "scale.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="jzi-bench", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("suites", nargs="*", default=["latency"], help=f"any of {', '.join(SUITES)} (default: latency)")
    p.add_argument("--preset", dest="presets", action="append", choices=PRESET_CHOICES,
                   help="model preset(s) to measure (repeatable; default tiny)")
    p.add_argument("--checkpoint", help="trained checkpoint (default: random weights of the preset)")
    p.add_argument("--source", help="imagery for the reference suite (XYZ folder / layout.yaml / GeoTIFF)")
    p.add_argument("--data", help="a dataset root in the authors' format (accuracy suite; e.g. from jzi-synth)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of the InfoNCE baseline (default 10)")
    p.add_argument("--tiles", help="tile store built from --source (reference and query suites; default: random embeddings)")
    p.add_argument("--queries", type=int, default=20, help="queries per configuration (default 20)")
    p.add_argument("--repeats", type=int, default=20, help="repeats for micro-benchmarks (default 20)")
    p.add_argument("--build-batch", type=int, default=16, help="views per batch for the build-rate figure")
    p.add_argument("--build-views", type=int, metavar="N",
                   help="throughput suite: build about N views (every K-th chunk) instead of the whole region")
    p.add_argument("--run-batch", type=int, nargs="+", default=[8], metavar="B",
                   help="throughput suite: jzi-run --batch sizes measured against --batch 1 (default 8)")
    p.add_argument("--throughput", action="append", choices=("build", "run"),
                   help="throughput suite: only the tile-build or the jzi-run half (repeatable; default both)")
    p.add_argument("--precision", dest="precisions", action="append", choices=("fp32", "int8"),
                   help="throughput suite: bundle precision(s) (repeatable; default fp32 and int8)")
    p.add_argument("--rounds", type=int, default=3,
                   help="throughput suite: side-by-side rounds, each a whole build or folder (default 3)")
    p.add_argument("--ann-steps", type=int, nargs="+", metavar="S",
                   help="retrieval suite: region sizes as zoom steps (default 4 5 6 = 10/40/160 km)")
    p.add_argument("--ann-state", metavar="DIR",
                   help="scale/retrieval suites: keep each FAISS build's progress in DIR, so a build that "
                        "stops (--ann-budget) goes on where it stopped when the same command runs again")
    p.add_argument("--ann-budget", type=float, metavar="MIN",
                   help="with --ann-state: stop each FAISS build after about MIN minutes (it saves itself)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads (default: all cores)")
    p.add_argument("--workdir", default="bench-out", help="where artifacts are cached (default bench-out/)")
    p.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    p.add_argument("--markdown", metavar="FILE", help="gpu suite: also write its Markdown table here")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.presets = args.presets or ["tiny"]
    args.throughput = args.throughput or ["build", "run"]
    args.precisions = args.precisions or ["fp32", "int8"]
    if args.ann_budget is not None and not args.ann_state:
        p.error("--ann-budget needs --ann-state DIR (where the build keeps its progress)")
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:  # one scale configuration in a fresh process (bench_scale)
        from .bench_scale import worker_main

        worker_main(args.worker[0], args.worker[1:])
        return 0
    from .bench_workdir import Workdir

    wd = Workdir(args.workdir, args.threads, log=lambda m: print(m, file=sys.stderr))
    results = {"machine": machine_info(args.threads), "weights": args.checkpoint or "random"}
    for suite in args.suites:
        rows = load_suite(suite)(args, wd)
        results[suite] = rows
        print_table(suite, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plots:
        for path in plot(results, Path(args.plots)):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

