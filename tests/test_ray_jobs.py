"""Ray jobs on a local 2-CPU Ray. Tile builds: byte-identical to the one-process build, also after a
killed actor and after a killed driver and a rerun; a chunk that always fails ends the run naming
its id after the configured retries. Batch localization: the same answers as jzi-run per photo.
Skipped only when Ray is not installed.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from runtime_fixtures import bundle, geotiff, rt_base, store32, write_photos  # noqa: F401
from test_tiles_shards import _arrays, _index_without_time, _layout, reference  # noqa: F401

from jzi.runtime import tiles as T

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'jzi[ray]')")
from jzi.runtime.ray_jobs import RayJobError, RayOptions, TileChunks, write_store_ray  # noqa: E402


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers do not import tests/
# local_ray: this file's one Ray (conftest.py)


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
        from test_ray_jobs import _layout, write_store_ray, RayOptions, TileChunks
        import ray, test_ray_jobs
        ray.cloudpickle.register_pickle_by_value(test_ray_jobs)

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


@pytest.mark.slow
def test_cli_ray_build_of_the_full_region(tmp_path, bundle, geotiff, store32):  # noqa: F811
    """jzi-tiles build --ray as a user runs it (its own local Ray): the same bytes as the one-process build."""
    out = tmp_path / "ray.jzt"
    r = subprocess.run([sys.executable, "-m", "jzi.runtime.tiles_cli", "build", "--engine", str(bundle), "--source",
                        str(geotiff), "-o", str(out), "--dtype", "fp32", "--chunk-rows", "512", "--batch", "64",
                        "--threads", "1", "--ray", "--local-cpus", "2"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4369 views" in r.stdout and "4369/4369" in r.stderr and "view/s" in r.stderr  # one bar, with a rate
    assert (out / "embeddings.f32").read_bytes() == (store32 / "embeddings.f32").read_bytes()

# ---------------------------------------------------------------------------------------------
# batch localization
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [pytest.param(120, id="120"), pytest.param(1000, id="1000", marks=pytest.mark.slow)])
def test_ray_batch_equals_jzi_run_per_photo(tmp_path, local_ray, rt_base, bundle, store32, n):  # noqa: F811
    from jzi.runtime import run_cli
    from jzi.runtime.batch import read_table
    from jzi.runtime.localizer import Localizer

    photos = write_photos(rt_base / f"photos{n}", rt_base, n, seed=21)
    out = tmp_path / "res.parquet"
    assert run_cli.main(["--engine", str(bundle), "--tiles", str(store32), str(photos[0].parent), "--out", str(out),
                         "--ray", "--workers", "2", "--worker-cpus", "0.5", "--threads", "1", "--chunk-size", "50",
                         "--quiet"]) == 0
    rows = read_table(out)
    assert [r["photo"] for r in rows] == [str(p) for p in photos]
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    for row, photo in zip(rows, photos):
        expect = loc.localize(photo)  # what jzi-run PHOTO prints
        assert (row["latitude"], row["longitude"], row["zoom_path"]) == (expect.latitude, expect.longitude, expect.path)
        assert row["step_probs"] == expect.step_probs and row["confidence"] == expect.confidence
    # and the jzi-run command line on single photos agrees too
    for photo in photos[:2]:
        r = subprocess.run([sys.executable, "-m", "jzi.runtime.run_cli", "--engine", str(bundle), "--tiles",
                            str(store32), str(photo), "--json"], capture_output=True, text=True, timeout=120)
        got = json.loads(r.stdout.splitlines()[0])  # JSON Lines: the answer, then a summary line
        row = rows[photos.index(photo)]
        assert (got["latitude"], got["longitude"], got["path"]) == (row["latitude"], row["longitude"], row["zoom_path"])

