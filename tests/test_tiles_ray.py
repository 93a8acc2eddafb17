"""Tile builds on Ray (local, 2 CPUs): byte-identical to the one-process build, also after a killed
actor and after a killed driver and a rerun; a chunk that always fails ends the run naming its id
after the configured retries. Skipped only when Ray is not installed.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from runtime_fixtures import bundle, geotiff, rt_base  # noqa: F401
from test_tiles_shards import _arrays, _index_without_time, _layout, reference  # noqa: F401

from jzi.runtime import tiles as T

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'jzi[ray]')")
from jzi.runtime.ray_jobs import RayJobError, RayOptions, TileChunks, write_store_ray  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One private 2-CPU Ray for the module (starting Ray costs seconds)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers do not import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


class Faulty(TileChunks):
    """The real work, with one chunk that fails: 'raise' always, 'die-once' kills its actor once,
    'die-always' kills its actor every time. Every attempt at that chunk is logged to ``log``."""

    def __init__(self, layout, geotiff, bundle, chunk, mode, log):  # noqa: F811
        super().__init__(layout, geotiff, bundle, backend="ort-cpu", threads=1, batch=16)
        self.bad, self.mode, self.log = chunk, mode, str(log)

    def open(self):
        encode = super().open()

        def faulty(chunk, prepared):
            if chunk == self.bad:
                with open(self.log, "a") as f:
                    f.write(f"{chunk}\n")
                first = Path(self.log).read_text().count("\n") == 1
                if self.mode == "raise":
                    raise ValueError("bad imagery here")
                if self.mode == "die-always" or first:
                    os.kill(os.getpid(), signal.SIGKILL)
            return encode(chunk, prepared)

        return faulty


def test_ray_build_equals_single_process_even_after_a_killed_actor(tmp_path, local_ray, reference, bundle, geotiff):  # noqa: F811
    layout = _layout(bundle, geotiff)
    out = write_store_ray(tmp_path / "ray.jzt", layout, TileChunks(layout, geotiff, bundle, backend="ort-cpu", threads=1,
                                                                   batch=16), RayOptions())
    assert _arrays(out) == _arrays(reference) and _index_without_time(out) == _index_without_time(reference)

    log = tmp_path / "attempts.log"
    out = write_store_ray(tmp_path / "killed.jzt", layout, Faulty(layout, geotiff, bundle, 2, "die-once", log),
                          RayOptions(retries=2))
    assert log.read_text().split() == ["2", "2"]  # killed mid-chunk, the restarted actor did it again
    assert _arrays(out) == _arrays(reference)


@pytest.mark.parametrize("mode", ["raise", "die-always"])
def test_a_chunk_that_always_fails_ends_the_run_naming_it(tmp_path, local_ray, bundle, geotiff, mode):  # noqa: F811
    layout = _layout(bundle, geotiff)
    log = tmp_path / "attempts.log"
    t0 = time.monotonic()
    with pytest.raises(RayJobError, match=r"chunk 3: ") as err:
        write_store_ray(tmp_path / "bad.jzt", layout, Faulty(layout, geotiff, bundle, 3, mode, log),
                        RayOptions(retries=1))
    assert time.monotonic() - t0 < 120
    assert log.read_text().split() == ["3", "3"]  # 1 + retries attempts, then it gave up
    assert ("bad imagery here" if mode == "raise" else "died") in str(err.value)
    assert "\n" not in str(err.value)
    # the other chunks are kept; the store is not in place
    assert not (tmp_path / "bad.jzt").exists()
    done = {int(p.name) for p in (tmp_path / "bad.jzt.partial" / "done").iterdir()}
    assert 3 not in done


def test_killed_driver_then_rerun_gives_the_same_store(tmp_path, local_ray, reference, bundle, geotiff):  # noqa: F811
    out = tmp_path / "driver.jzt"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_tiles_ray import _layout, write_store_ray, RayOptions, TileChunks
        import ray, test_tiles_ray
        ray.cloudpickle.register_pickle_by_value(test_tiles_ray)

        class Slow(TileChunks):
            def open(self):
                encode = super().open()
                return lambda c, p: (time.sleep(0.5), encode(c, p))[1]

        b, g = Path({str(bundle)!r}), Path({str(geotiff)!r})
        layout = _layout(b, g)
        write_store_ray(Path({str(out)!r}), layout, Slow(layout, g, b, backend="ort-cpu", threads=1),
                        RayOptions(local_cpus=2), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    done = tmp_path / "driver.jzt.partial" / "done"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and len(list(done.glob("*")) if done.exists() else []) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-run
    proc.wait(timeout=30)
    marked = {int(p.name) for p in done.iterdir()}
    assert 2 <= len(marked) < 5 and not out.exists()

    layout = _layout(bundle, geotiff)
    resumed = write_store_ray(out, layout, TileChunks(layout, geotiff, bundle, backend="ort-cpu", threads=1),
                              RayOptions(), progress=False)
    assert _arrays(resumed) == _arrays(reference)
    assert T.verify_store(resumed)["ok"]
