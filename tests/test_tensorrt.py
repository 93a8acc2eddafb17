"""TensorRT engines built by jzi-export (--trt, --trt-only) on a CUDA GPU, run through the runtime's
TensorRT backend and compared with ONNX Runtime on CPU. Skipped, with the reason, without TensorRT
or a GPU (run with ``-m gpu``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jzi.export.config import get_preset
from jzi.runtime.backends import open_backend
from jzi.runtime.bundle import GRAPHS, load_manifest

pytestmark = pytest.mark.gpu
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}  # relative to the largest embedding component (TF32 off for fp32)


def _why_not() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    from jzi.export.tensorrt_build import cuda_device

    return None if cuda_device() is not None else "no CUDA GPU"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.model import JustZoomIn

    reason = _why_not()
    if reason:
        pytest.skip(f"TensorRT engines cannot be built here: {reason}")
    path = tmp_path_factory.mktemp("trt") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(JustZoomIn(get_preset("tiny")).eval(), path)
    return path


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jzi.export.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_only_builds_engines_that_match_onnx_runtime(tiny_checkpoint, tmp_path, precision):
    from jzi.export.onnx_export import export_bundle

    bundle, _ = export_bundle(tiny_checkpoint, tmp_path / "b", precision=precision)
    proc = run_cli("--trt-only", bundle, "--max-batch", "16")
    assert proc.returncode == 0, proc.stderr
    man = load_manifest(bundle)  # verifies the engines' and timing cache's sha256 too
    trt_info = man["tensorrt"]
    assert int(trt_info["version"].split(".")[0]) in (10, 11) and trt_info["strongly_typed"]
    assert (bundle / trt_info["timing_cache"]).stat().st_size > 0
    for graph in GRAPHS:
        engine = trt_info["engines"][graph]
        assert (bundle / man["files"][engine["role"]]["path"]).stat().st_size > 0
        assert engine["batch_profile"][2] == 16
        names = {t["name"] for t in engine["io"]}
        assert names == {t["name"] for t in man["tensors"][graph]["inputs"] + man["tensors"][graph]["outputs"]}

    trt_backend = open_backend(bundle, man, "tensorrt")
    cpu_backend = open_backend(bundle, man, "ort-cpu", threads=2)
    s = man["image_size"]
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (5, s, s, 3), dtype=np.uint8)
    street = rng.integers(0, 256, (2, s, 2 * s, 3), dtype=np.uint8)
    for method, images in (("encode_views", views), ("encode_street", street)):
        got, want = getattr(trt_backend, method)(images), getattr(cpu_backend, method)(images)
        assert np.abs(got - want).max() / np.abs(want).max() < TOLERANCE[precision], method

    # the decoder step: same logits from the same inputs, through the runtime's DecoderStep
    width = man["width"]
    query = rng.standard_normal((3, width)).astype(np.float32)
    view = rng.standard_normal((3, width)).astype(np.float32)
    logits = []
    for backend in (trt_backend, cpu_backend):
        step = backend.decoder(3)
        step.reset()
        step.query[:] = query
        step.view[:] = view
        step.prev_action[:] = 0
        step.step[...] = 0
        logits.append(step.run().copy())
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-3)


def test_export_with_trt_flag_builds_engines(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    proc = run_cli(tiny_checkpoint, "-o", out, "--trt", "-q")
    assert proc.returncode == 0, proc.stderr
    man = load_manifest(out)
    assert set(man["tensorrt"]["engines"]) == set(GRAPHS)
    # a second build on the same device starts from the timing cache beside the engines
    again = run_cli("--trt-only", out, "-q")
    assert again.returncode == 0, again.stderr
    assert load_manifest(out)["tensorrt"]["timing_cache"] == man["tensorrt"]["timing_cache"]


def test_int8_bundle_is_refused_for_tensorrt(tiny_checkpoint, tmp_path):
    from jzi.export.onnx_export import export_bundle

    bundle, _ = export_bundle(tiny_checkpoint, tmp_path / "b8", precision="int8")
    proc = run_cli("--trt-only", bundle)
    assert proc.returncode != 0 and "int8 bundles" in proc.stderr and "Traceback" not in proc.stderr
