"""``jzi-bench gpu``: every GPU figure in one command, on a machine with a CUDA GPU.

    jzi-bench gpu [--preset official] [--checkpoint CKPT] [--json gpu.json] [--markdown gpu.md]

1. exports fp32 and fp16 bundles of the checkpoint (random weights of the preset without one) and
   builds their TensorRT engines on this GPU (``jzi-export --trt-only``); int8 engines are not built:
   jzi's int8 bundles are ONNX Runtime dynamic quantisation, which TensorRT does not take;
2. runs the ``gpu``-marked tests (``pytest -m gpu``) and records their outcome;
3. measures each GPU backend (ORT CUDA provider, ORT TensorRT provider, native TensorRT) on each
   bundle: per-query latency (p50/p90/p99 and the per-stage medians, one photo at a time) and
   throughput (views/s of the view encoder at the tile-build batch, queries/s at batch 8);
4. writes one JSON record and one Markdown table, both naming the card.

Without a CUDA GPU it stops at once with one line saying so. Backends that cannot run (no
onnxruntime-gpu, no tensorrt) are listed with their reason instead of a figure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .bench_workdir import Workdir

GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
GPU_PRECISIONS = ("fp32", "fp16")
VIEW_BATCH = 32
QUERY_BATCH = 8


def engine_bundle(wd: Workdir, ckpt: Path, precision: str) -> Path:
    """A copy of the precision's bundle with TensorRT engines built on this device (made once)."""
    from .tensorrt_build import build_engines

    src = wd.bundle(ckpt, precision)
    out = src.with_name(src.name + "-trt")
    if not (out / "tensorrt.timing.cache").exists():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
        wd.log(f"gpu: building TensorRT engines for {out.name}")
        build_engines(out, log=wd.log)
    return out


# set in the environment of the pytest run below, so that the gpu-marked test of this suite, which runs
# the suite, does not run it again from inside it
INNER_RUN_ENV = "JZI_BENCH_GPU_TESTS"


def run_gpu_tests(timeout_s: int = 1800) -> dict:
    """``pytest -m gpu`` in the project's tests folder: counts and the summary line."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    if not tests.is_dir():
        return {"skipped": "no tests/ folder beside this installation (an installed wheel, not a checkout)"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(tests)],
                          capture_output=True, text=True, timeout=timeout_s, env={**os.environ, INNER_RUN_ENV: "1"})
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": proc.returncode, "summary": summary, **pytest_counts(summary)}


def pytest_counts(summary: str) -> dict:
    """``3 passed, 1 skipped, 2 errors in 4.1s`` -> {"passed": 3, "failed": 0, "skipped": 1, "error": 2}."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for part in summary.replace("=", "").split(","):
        words = part.split()
        if len(words) >= 2 and words[0].isdigit():
            key = words[1].rstrip("s") if words[1].startswith("error") else words[1]
            counts[key] = counts.get(key, 0) + int(words[0])
    return counts


def measure_backend(bundle: Path, store: Path, photos, backend: str) -> dict:
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.localizer import Localizer

    from .bench_latency import run_localizer

    row = run_localizer(bundle, store, photos, threads=1, backend=backend)
    man = load_manifest(bundle, verify=False)
    eng = open_backend(bundle, man, backend, graphs=("view_encoder",))
    s = int(man["image_size"])
    views = np.random.default_rng(0).integers(0, 256, (VIEW_BATCH, s, s, 3), dtype=np.uint8)
    eng.encode_views(views)  # warm-up (engine set-up, ORT-TRT engine build)
    t0 = time.perf_counter()
    for _ in range(3):
        eng.encode_views(views)
    row["views_per_s"] = 3 * VIEW_BATCH / (time.perf_counter() - t0)
    loc = Localizer(bundle, store, backend=backend)
    batch = (list(photos) * QUERY_BATCH)[:QUERY_BATCH]
    loc.localize_batch(batch)
    t0 = time.perf_counter()
    for _ in range(3):
        loc.localize_batch(batch)
    row["queries_per_s_batch8"] = 3 * QUERY_BATCH / (time.perf_counter() - t0)
    return row


def suite_gpu(args, wd: Workdir) -> list[dict]:
    from jzi.runtime.backends import available_backends
    from jzi.runtime.bundle import load_manifest

    from .tensorrt_build import cuda_device

    device = cuda_device()
    if device is None:
        raise SystemExit("jzi-bench: error: the gpu suite needs a CUDA GPU; none is visible here")
    preset = args.presets[-1]
    ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
    photos = wd.photos(max(args.queries, QUERY_BATCH))
    store = wd.random_store(wd.bundle(ckpt, "fp32"))
    rows = [{"what": "device", **device}]
    bundles = {}
    for precision in GPU_PRECISIONS:
        try:
            plain = wd.bundle(ckpt, precision)
        except Exception as e:  # a bundle this torch/ONNX Runtime pair cannot export: said, and the rest goes on
            rows.append({"what": "bundle", "precision": precision, "error": str(e).splitlines()[0]})
            continue
        try:
            bundles[precision] = engine_bundle(wd, ckpt, precision)
        except Exception as e:  # an engine that does not build is a figure too
            rows.append({"what": "engines", "precision": precision, "skipped": str(e).splitlines()[0]})
            bundles[precision] = plain  # ONNX Runtime's CUDA provider needs no engines
    rows.append({"what": "engines", "precision": "int8",
                 "skipped": "int8 bundles are ONNX Runtime dynamic quantisation (CPU); TensorRT does not build them"})
    wd.log("gpu: running the gpu-marked tests")
    rows.append({"what": "gpu tests", **run_gpu_tests()})
    for precision, bundle in bundles.items():
        status = available_backends(load_manifest(bundle, verify=False))
        for backend in GPU_BACKENDS:
            row = {"what": "latency", "preset": preset, "backend": backend, "precision": precision}
            if status[backend] != "ok":
                rows.append({**row, "skipped": status[backend]})
                continue
            wd.log(f"gpu: {backend} {precision}")
            try:
                rows.append({**row, **measure_backend(bundle, store, photos, backend)})
            except Exception as e:
                rows.append({**row, "error": str(e).splitlines()[0]})
    if getattr(args, "markdown", None):
        Path(args.markdown).write_text(gpu_markdown(rows))
    return rows


def gpu_markdown(rows: list[dict]) -> str:
    """One Markdown table of the gpu suite's rows, headed by the card."""
    device = next((r for r in rows if r["what"] == "device"), {})
    lines = [f"### GPU: {device.get('name', 'unknown')} (compute capability {device.get('compute_capability', '?')})", ""]
    tests = next((r for r in rows if r["what"] == "gpu tests"), None)
    if tests:
        lines += [f"gpu-marked tests: {tests.get('summary') or tests.get('skipped')}", ""]
    for r in rows:
        if r["what"] == "bundle":
            lines.append(f"- {r['precision']} bundle not exported: {r['error']}")
        if r["what"] == "engines" and "skipped" in r:
            lines.append(f"- engines {r['precision']}: {r['skipped']}")
    lines += ["", "| backend | precision | encoder (2 halves) | decoder steps | p50 / p90 / p99 | views/s "
              f"(batch {VIEW_BATCH}) | queries/s (batch {QUERY_BATCH}) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] != "latency":
            continue
        if "total_ms" not in r:
            lines.append(f"| {r['backend']} | {r['precision']} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        t = r["total_ms"]
        steps = " / ".join(f"{x:.2f}" for x in r["decoder_step_ms"])
        lines.append(f"| {r['backend']} | {r['precision']} | {r['encoder_ms']:.2f} ms | {steps} ms | "
                     f"{t['p50']:.2f} / {t['p90']:.2f} / {t['p99']:.2f} ms | {r['views_per_s']:.1f} | "
                     f"{r['queries_per_s_batch8']:.1f} |")
    return "\n".join(lines) + "\n"
