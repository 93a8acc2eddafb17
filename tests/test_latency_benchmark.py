"""The latency suite as pytest-benchmark tests, so that runs can be compared with each other:

    python -m pytest tests/test_latency_benchmark.py -m slow --benchmark-autosave --benchmark-json latency.json
    python -m pytest tests/test_latency_benchmark.py -m slow --benchmark-compare   # against the last autosaved run

Tiny random-weight model (the runtime tests' fixtures), ONNX Runtime CPU, 1 thread. Each benchmark also
asserts the answer, so a fast wrong result cannot pass. Marked ``slow``: timing is not for the default suite.
"""
import numpy as np
import pytest
from runtime_fixtures import bundle, make_photos, rt_base, store32  # noqa: F401

from jzi.runtime.localizer import Localizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def localizer(bundle, store32):  # noqa: F811
    return Localizer(bundle, store32, backend="ort-cpu", threads=1)


@pytest.fixture(scope="module")
def photo(rt_base):  # noqa: F811
    return make_photos(rt_base, 1)[0]


def test_query_latency(benchmark, localizer, photo):
    benchmark.group = "latency"
    res = benchmark(localizer.localize, photo)
    assert len(res.path) == localizer.steps and 0 < res.confidence <= 1


def test_zoom_loop_latency(benchmark, localizer):
    benchmark.group = "latency"
    query = np.random.default_rng(0).standard_normal((1, int(localizer.manifest["width"]))).astype(np.float32)
    res = benchmark(localizer.zoom, query)
    assert len(res[0].path) == localizer.steps


def test_beam_query_latency(benchmark, localizer, photo):
    benchmark.group = "latency"
    res = benchmark(localizer.localize, photo, 4)
    assert len(res.candidates) == 4
