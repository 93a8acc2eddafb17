"""Artifacts shared by the whole test session, each built once: the seed-0 tiny checkpoint, one bundle
per precision, the GeoTIFF and the tile stores built from it (builders in runtime_fixtures.py, cached
under pytest's session temp directory, shared by pytest-xdist's workers), and a local Ray per test file that
asks for one. Tests only read them; one that needs to change an artifact copies it first."""
from __future__ import annotations

import ctypes
import gc
import os
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
    and two 2-thread workers on 2 cores doubled the CPU time of the training tests (RESULTS.md, issue 12)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the default of the commands the tests start
        try:
            import torch
        except ImportError:  # an environment without torch: no torch threads to set
            return
        torch.set_num_threads(threads)


# The longest files start first: make test hands whole files to its pytest-xdist workers in this order
# (--dist loadfile --no-loadscope-reorder), so that no worker is left alone with a long one at the end while the
# other idles (durations measured on 2 cores, RESULTS.md, issue 12; a file not named here keeps its place after
# these). A file's module fixtures are then made once, and Ray's tests share one worker and its one Ray.
LONGEST_FIRST = ("test_localizes.py", "test_ray_jobs.py", "test_native.py", "test_tiles.py", "test_train.py",
                 "test_bench_retrieval.py", "test_synthetic.py", "test_tiles_shards.py", "test_imagery_fit.py",
                 "test_export.py", "test_localizer_threads.py", "test_data.py", "test_checkpoint.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


try:  # glibc: hand freed heap pages back to the system
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """At the end of each file (its module fixtures are gone by now), collect and trim: a worker's heap otherwise
    keeps the pages earlier files freed, and the next file's peak stacks on top of them."""
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)
