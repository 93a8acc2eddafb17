"""Artifacts shared by the whole test session, each built once: the seed-0 tiny checkpoint, one bundle
per precision, the GeoTIFF and the tile stores built from it (builders in runtime_fixtures.py, cached
under pytest's session temp directory, shared by pytest-xdist's workers), and a local Ray per test file that
asks for one. Tests only read them; one that needs to change an artifact copies it first. Below them: how make
test's two workers share the files (torch's files on one, everything else where there is room)."""
from __future__ import annotations

import ctypes
import gc
import os
import sys
from pathlib import Path

import pytest
from runtime_fixtures import bundle, geotiff, make_bundle, make_checkpoint, rt_base, store16, store32  # noqa: F401

PRECISIONS = ("fp32", "int8", "fp16")


@pytest.fixture(scope="session")
def checkpoint(rt_base) -> Path:  # noqa: F811
    return make_checkpoint(rt_base / "tiny.pt")


@pytest.fixture(scope="session")
def bundles(rt_base, checkpoint) -> dict[str, Path]:  # noqa: F811
    """One bundle per precision, exported from ``checkpoint``."""
    return {p: make_bundle(rt_base, p) for p in PRECISIONS}


@pytest.fixture(scope="module")
def local_ray():
    """One private 2-CPU Ray for a test file, started by its first test that asks (a start costs seconds) and shut
    down after the file: its processes then stop taking memory and CPU from the rest of the run."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'jzi[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def pytest_configure(config):
    """An xdist worker keeps to its share of the cores: torch's and OpenMP's thread pools spin while they wait,
    and two 2-thread workers on 2 cores doubled the CPU time of the training tests (RESULTS.md, issue 12). torch
    reads OMP_NUM_THREADS when it is first imported, which is after this hook: the worker that runs no torch test
    never imports it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


# The files that run torch in the test process, and test_localizes (its training runs in its own processes, but it
# is the longest file and keeps their worker busy while the other worker runs the rest). These files import torch
# inside their tests, never at the top: each worker collects every file. Their order: after test_localizes, the
# files whose tests peak highest above what the worker holds, while it holds least (what a file leaves behind adds
# up: transformers' DINOv2 code after the first model, ONNX Runtime's sessions).
TORCH_FILES = ("test_localizes.py", "test_model.py", "test_data.py", "test_checkpoint.py", "test_localizer.py",
               "test_train.py", "test_export.py", "test_bad_inputs.py", "test_bench_gpu.py", "test_baselines.py",
               "test_cli_help.py", "test_fast_data.py", "test_tensorrt.py", "test_bench.py", "test_onnx_fusions.py")
# The torch-free files that peak high in the test process (Ray Data, store builds, synthetic worlds made in
# process), longest first: on top of what the torch worker holds by its end they would pass 1 GB.
HEAVY_RUNTIME_FILES = ("test_ray_jobs.py", "test_native.py", "test_tiles.py", "test_bench_retrieval.py",
                       "test_synthetic.py", "test_tiles_shards.py", "test_imagery_fit.py")
# make test's pytest-xdist scheduler hands each group to a worker as one unit, both at the start, and every other
# file whole to whichever worker is free, the longer ones first: torch (with transformers, 0.45 GB) and Ray Data
# never share a process, and each worker stays under 1 GB (RESULTS.md, issue 12).
UNITS = {**{name: "torch" for name in TORCH_FILES}, **{name: "heavy-runtime" for name in HEAVY_RUNTIME_FILES}}
LONGEST_FIRST = TORCH_FILES + HEAVY_RUNTIME_FILES + ("test_localizer_threads.py", "test_batch.py", "test_run_cli.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown where it is not installed
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile (make test): whole files to workers, the two groups of files above as one unit each."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class TorchApartScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return UNITS.get(Path(file).name, file)

    return TorchApartScheduling(config, log)


try:  # glibc: hand freed heap pages back to the system
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


_torch_expected = not os.environ.get("PYTEST_XDIST_WORKER")  # one process runs every file: torch is expected


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """At the end of each file (its module fixtures are gone by now), collect and trim: a worker's heap otherwise
    keeps the pages earlier files freed, and the next file's peak stacks on top of them. And in a worker that has
    run no torch file, a file that brought torch in fails once, naming itself."""
    global _torch_expected
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)
        if item.path.name in TORCH_FILES:
            _torch_expected = True
        elif not _torch_expected and "torch" in sys.modules:
            _torch_expected = True  # said once
            pytest.fail(f"{item.path.name} imported torch: name it in TORCH_FILES (tests/conftest.py)", pytrace=False)
