"""``jzi-bench gpu``: on a machine without a CUDA GPU it stops at once with one line; its report (the
Markdown table, the gpu-marked tests' counts) is checked on rows of the shape the suite writes; on a GPU
machine (``-m gpu``) the whole suite runs on the tiny preset."""
import json
import os
import subprocess
import sys

import pytest
from helpers import run_main

from jzi.export.bench_gpu import INNER_RUN_ENV, gpu_markdown, pytest_counts


def test_without_a_gpu_the_suite_is_one_clear_error(tmp_path):
    from jzi.export.tensorrt_build import cuda_device

    if cuda_device() is not None:
        pytest.skip("a CUDA GPU is visible: test_gpu_suite_end_to_end runs the suite instead")
    res = subprocess.run([sys.executable, "-m", "jzi.export.bench", "gpu", "--workdir", str(tmp_path / "w"),
                          "--json", str(tmp_path / "gpu.json"), "--markdown", str(tmp_path / "gpu.md")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip() == "jzi-bench: error: the gpu suite needs a CUDA GPU; none is visible here"
    assert not (tmp_path / "gpu.json").exists() and not (tmp_path / "gpu.md").exists()
    assert not list((tmp_path / "w").iterdir())  # nothing exported or built


def test_pytest_summary_counts():
    assert pytest_counts("3 passed, 1 skipped, 2 errors, 480 deselected in 4.12s") == {
        "passed": 3, "failed": 0, "skipped": 1, "error": 2, "deselected": 480}
    assert pytest_counts("==== 1 failed, 1 error in 0.5s ====") == {"passed": 0, "failed": 1, "skipped": 0, "error": 1}
    assert pytest_counts("no tests ran in 0.01s") == {"passed": 0, "failed": 0, "skipped": 0, "error": 0}


def test_markdown_names_the_card_and_every_backend():
    latency = {"what": "latency", "preset": "tiny", "encoder_ms": 1.234, "decoder_step_ms": [0.1, 0.2, 0.3, 0.4],
               "total_ms": {"p50": 3.0, "p90": 3.5, "p99": 4.25}, "views_per_s": 812.3, "queries_per_s_batch8": 99.9}
    rows = [{"what": "device", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
            {"what": "engines", "precision": "int8", "skipped": "int8 bundles are ONNX Runtime dynamic quantisation"},
            {"what": "bundle", "precision": "fp16", "error": "ValidationError: Graph must be in SSA form"},
            {"what": "gpu tests", "returncode": 0, "summary": "12 passed, 470 deselected in 80.1s"},
            {**latency, "backend": "tensorrt", "precision": "fp16"},
            {"what": "latency", "preset": "tiny", "backend": "ort-trt", "precision": "fp32",
             "skipped": "onnxruntime-gpu is not installed"},
            {"what": "latency", "preset": "tiny", "backend": "ort-cuda", "precision": "fp32", "error": "CUDA OOM"}]
    md = gpu_markdown(rows).splitlines()
    assert md[0] == "### GPU: NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert "gpu-marked tests: 12 passed, 470 deselected in 80.1s" in md
    assert "- fp16 bundle not exported: ValidationError: Graph must be in SSA form" in md
    assert "- engines int8: int8 bundles are ONNX Runtime dynamic quantisation" in md
    assert ("| tensorrt | fp16 | 1.23 ms | 0.10 / 0.20 / 0.30 / 0.40 ms | 3.00 / 3.50 / 4.25 ms | 812.3 | 99.9 |"
            in md)
    assert "| ort-trt | fp32 | onnxruntime-gpu is not installed | | | | |" in md
    assert "| ort-cuda | fp32 | CUDA OOM | | | | |" in md


def test_without_engines_the_onnx_runtime_backends_are_still_measured(tmp_path, bundles, checkpoint):
    """A card without TensorRT (engines fail to build) still gets its ONNX Runtime rows, on the plain bundles:
    here, on a CPU, each says why it cannot run instead of being left out. A precision whose bundle does not
    export (fp16 with onnxruntime-gpu 1.31.1 on an H200, before to_fp16 dropped the repeated Casts) is one row
    saying so, and the other goes on."""
    import shutil
    from argparse import Namespace
    from unittest import mock

    import onnxruntime as ort

    from jzi.export import bench_gpu
    from jzi.export.bench_workdir import Workdir

    wd = Workdir(tmp_path / "w", threads=1, log=lambda *a: None)
    # the session's fp32 bundle of this checkpoint, where the suite looks for it; fp16 fails to export
    shutil.copytree(bundles["fp32"], wd.root / f"{checkpoint.stem}-fp32")
    exported = wd.bundle

    def bundle(ckpt, precision):
        if precision == "fp16":
            raise ValueError("Graph must be in single static assignment (SSA) form")
        return exported(ckpt, precision)

    card = {"name": "a card without TensorRT", "compute_capability": "9.0"}
    with mock.patch("jzi.export.tensorrt_build.cuda_device", return_value=card), \
            mock.patch.object(wd, "bundle", side_effect=bundle), \
            mock.patch.object(bench_gpu, "engine_bundle", side_effect=RuntimeError("tensorrt is not installed")), \
            mock.patch.object(bench_gpu, "run_gpu_tests", return_value={"skipped": "not run here"}):
        rows = bench_gpu.suite_gpu(Namespace(presets=["tiny"], checkpoint=str(checkpoint), queries=2, markdown=None),
                                   wd)
    assert [r for r in rows if r["what"] == "bundle"] == [
        {"what": "bundle", "precision": "fp16", "error": "Graph must be in single static assignment (SSA) form"}]
    assert [(r["precision"], r["skipped"]) for r in rows if r["what"] == "engines"][0] == (
        "fp32", "tensorrt is not installed")
    latency = [r for r in rows if r["what"] == "latency"]
    assert {(r["backend"], r["precision"]) for r in latency} == {(b, "fp32") for b in ("ort-cuda", "ort-trt", "tensorrt")}
    assert all(r.get("skipped") or "total_ms" in r for r in latency)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert all(r.get("skipped") for r in latency)  # no GPU provider on this machine: a reason each


@pytest.mark.gpu
def test_gpu_suite_end_to_end(tmp_path):
    from jzi.export.tensorrt_build import cuda_device

    if cuda_device() is None:
        pytest.skip("no CUDA GPU")
    if os.environ.get(INNER_RUN_ENV):
        pytest.skip("this pytest run was started by the gpu suite itself")
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    res = run_main("jzi.export.bench", "gpu", "--preset", "tiny", "--queries", "8", "--workdir", tmp_path / "w",
                   "--json", out, "--markdown", md)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["gpu"]
    device = rows[0]
    assert device["what"] == "device" and device["name"] == cuda_device()["name"]
    tests = next(r for r in rows if r["what"] == "gpu tests")
    assert tests["returncode"] == 0 and tests["failed"] == 0 and tests["error"] == 0 and tests["passed"] > 0
    latency = [r for r in rows if r["what"] == "latency"]
    assert {(r["backend"], r["precision"]) for r in latency} == {
        (b, p) for b in ("ort-cuda", "ort-trt", "tensorrt") for p in ("fp32", "fp16")}
    measured = [r for r in latency if "total_ms" in r]
    assert measured, [r.get("skipped") or r.get("error") for r in latency]
    for r in measured:
        assert r["total_ms"]["p50"] > 0 and r["views_per_s"] > 0 and r["queries_per_s_batch8"] > 0
    assert md.read_text().startswith(f"### GPU: {device['name']}")
