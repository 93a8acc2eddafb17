"""Every TensorRT name jzi's engine code uses exists in the published TensorRT 10 and 11 Python bindings.

The fast test checks which names the AST walk collects; the slow one downloads the binding wheels
(``tensorrt-cu12-bindings``, no TensorRT libraries) with pip and looks every name up in them."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_tensorrt_names.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_tensorrt_names", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_walk_collects_tensorrt_names_and_nothing_else():
    used = load_checker().used_names()
    for name in ("set_input_shape", "set_tensor_address", "execute_async_v3", "deserialize_cuda_engine",
                 "STRONGLY_TYPED", "build_serialized_network", "get_tensor_profile_shape", "create_timing_cache"):
        assert name in used, name
    for foreign in ("cudaMalloc", "cudaStreamBeginCapture", "astype", "ctypes", "reset", "engine", "manifest"):
        assert foreign not in used, foreign


def test_a_missing_name_is_reported(tmp_path):
    chk = load_checker()
    (tmp_path / "tensorrt.so").write_bytes(b"\0set_input_shape\0SHAPE_INPUT\0")
    report = chk.check([tmp_path])
    missing = report["versions"][tmp_path.name]
    assert "execute_async_v3" in missing and "set_input_shape" not in missing
    assert "INPUT" not in missing  # the tail of SHAPE_INPUT, as a linker merges strings


@pytest.mark.slow
def test_names_exist_in_tensorrt_10_and_11_bindings(tmp_path):
    chk = load_checker()
    try:
        wheels = chk.download(["10.13.*", "11.4.*"], tmp_path)
    except Exception as e:  # no package registry reachable
        pytest.skip(f"cannot download {chk.BINDING_PACKAGE}: {e}")
    report = chk.check(wheels)
    assert len(report["versions"]) == 2
    for version, missing in report["versions"].items():
        assert not missing, f"TensorRT {version} lacks {missing}"
