"""One Localizer shared by threads: every answer equals the serial answer (greedy and beams)."""
import threading

import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, make_photos, rt_base, store32  # noqa: F401

from jzi.runtime.localizer import Localizer

THREADS, PHOTOS = 8, 50


@pytest.fixture(scope="module")
def photos(rt_base):  # noqa: F811
    return make_photos(rt_base, PHOTOS, seed=11)


def _answer(r):
    return r.path, r.step_probs, r.confidence, r.latitude, r.longitude, [(c.path, c.score) for c in r.candidates]


def _hammer(loc, photos, beams, call):
    """THREADS threads, each localizing every photo in its own order, all started together."""
    answers = [[None] * len(photos) for _ in range(THREADS)]
    errors = []
    start = threading.Barrier(THREADS)

    def work(t):
        order = np.random.default_rng(t).permutation(len(photos))
        start.wait()
        try:
            for i in order:
                answers[t][i] = _answer(call(loc, photos[i], beams))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return answers


@pytest.mark.parametrize("beams", [1, 4])
def test_shared_localizer_gives_the_serial_answers(bundle, store32, photos, beams):  # noqa: F811
    serial_loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    serial = [_answer(serial_loc.localize(p, beams=beams)) for p in photos]
    shared = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    answers = _hammer(shared, photos, beams, lambda loc, p, k: loc.localize(p, beams=k))
    wrong = sum(a != s for per_thread in answers for a, s in zip(per_thread, serial))
    assert wrong == 0, f"{wrong} of {THREADS * PHOTOS} answers differ from the serial run"
    # concurrent single queries really were gathered into shared encoder batches
    batched = shared.localize_batch(photos[:3], beams=beams)
    assert [_answer(r) for r in batched] == serial[:3]


def test_batches_and_zoom_calls_from_threads_are_serial_too(bundle, store32, photos):  # noqa: F811
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    serial = [_answer(loc.localize(p, beams=2)) for p in photos[:16]]
    answers = _hammer(loc, photos[:16], 2, lambda loc, p, k: loc.localize_batch([p, p], beams=k)[1])
    assert all(per_thread == serial for per_thread in answers)


def test_concurrent_queries_share_encoder_batches(bundle, store32, photos):  # noqa: F811
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1, max_batch=8)
    sizes = []
    _hammer(loc, photos[:20], 1, lambda loc, p, k: sizes.append(loc.localize(p).timings["batch"]) or loc.localize(p))
    assert max(sizes) > 1 and max(sizes) <= 8
