"""jzi-run --out: one row per photo in Parquet or CSV, written per chunk so a rerun resumes; --shard
splits the chunks among processes (no dependency), and the merged table equals the one-process one."""
import csv
import os
import subprocess
import sys

import pytest
from runtime_fixtures import bundle, geotiff, rt_base, store32, write_photos  # noqa: F401

from jzi.runtime import batch as B
from jzi.runtime import run_cli
from jzi.runtime.geometry import distance_m
from jzi.runtime.localizer import Localizer


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jzi.runtime.run_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def photo_csv(tmp_path_factory, rt_base):  # noqa: F811
    """40 photos listed in a CSV with (made-up) truth, one of them unreadable."""
    root = tmp_path_factory.mktemp("batch")
    paths = write_photos(root / "photos", rt_base, 40, seed=11)
    paths[7].write_bytes(b"not a jpeg")
    with open(root / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "latitude", "longitude"])
        for i, p in enumerate(paths):
            w.writerow([f"photos/{p.name}", 38.89 + i * 1e-3, -76.99])
    return root / "list.csv"


def test_table_rows_match_the_localizer_photo_by_photo(tmp_path, photo_csv, bundle, store32):  # noqa: F811
    out = tmp_path / "res.csv"
    r = _run("--engine", bundle, "--tiles", store32, photo_csv, "--out", out, "--chunk-size", "16", "--threads", "1")
    assert r.returncode == 1, r.stderr  # one unreadable photo
    assert "wrote" in r.stdout and "40 photos, 1 failed" in r.stdout and "p0007.jpg" in r.stderr
    rows = B.read_table(out)
    assert [row["photo"] for row in rows] == [f"photos/p{i:04d}.jpg" for i in range(40)]
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    for i, row in enumerate(rows):
        if i == 7:
            assert row["latitude"] is None and "p0007.jpg" in row["failure"]
            continue
        expect = loc.localize(photo_csv.parent / row["photo"])
        assert (row["latitude"], row["longitude"]) == (expect.latitude, expect.longitude)  # exact, CSV round-trips
        assert row["zoom_path"] == expect.path and row["step_probs"] == pytest.approx(expect.step_probs, rel=1e-12)
        assert row["confidence"] == pytest.approx(expect.confidence, rel=1e-12) and row["failure"] == ""
        truth = (38.89 + i * 1e-3, -76.99)
        assert (row["truth_latitude"], row["truth_longitude"]) == pytest.approx(truth)
        assert row["error_m"] == pytest.approx(float(distance_m([expect.latitude, expect.longitude], truth)))
    assert not (tmp_path / "res.csv.parts").exists()


def test_interrupted_run_resumes_and_parquet_equals_csv(tmp_path, photo_csv, bundle, store32, monkeypatch, capsys):  # noqa: F811
    full = tmp_path / "full.csv"
    assert run_cli.main(["--engine", str(bundle), "--tiles", str(store32), str(photo_csv), "--out", str(full),
                         "--chunk-size", "8", "--threads", "1", "--quiet"]) == 1
    calls = []
    real = B.localize_chunk

    def dies_on_third(loc, queries, **kw):
        calls.append(len(queries))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(loc, queries, **kw)

    out = tmp_path / "res.parquet"
    args = ["--engine", str(bundle), "--tiles", str(store32), str(photo_csv), "--out", str(out), "--chunk-size", "8",
            "--threads", "1", "--quiet"]
    monkeypatch.setattr(B, "localize_chunk", dies_on_third)
    assert run_cli.main(args) == 130
    parts = tmp_path / "res.parquet.parts"
    assert sorted(p.name for p in parts.glob("0*.json")) == ["00000000.json", "00000001.json"] and not out.exists()
    calls.clear()
    monkeypatch.setattr(B, "localize_chunk", lambda loc, q, **kw: (calls.append(len(q)), real(loc, q, **kw))[1])
    assert run_cli.main(args) == 1  # still the one unreadable photo
    assert calls == [8, 8, 8]  # only chunks 2, 3, 4
    assert B.read_table(out) == B.read_table(full) and not parts.exists()

    # a different run does not mix its results into another's parts
    out.unlink()
    monkeypatch.setattr(B, "localize_chunk", dies_on_third)
    calls.clear()
    assert run_cli.main(args) == 130
    capsys.readouterr()
    assert run_cli.main(args + ["--beams", "2"]) == 1
    err = capsys.readouterr().err
    assert "results of a different run" in err and len(err.strip().splitlines()) == 1
    assert run_cli.main(args + ["--beams", "2", "--force"]) == 1 and B.read_table(out)[0]["failure"] == ""


def test_two_shards_then_a_final_pass_equal_one_process(tmp_path, photo_csv, bundle, store32):  # noqa: F811
    one = tmp_path / "one.csv"
    common = ["--engine", bundle, "--tiles", store32, photo_csv, "--chunk-size", "8", "--threads", "1", "--quiet"]
    assert _run(*common, "--out", one).returncode == 1
    out = tmp_path / "sharded.csv"
    procs = [subprocess.Popen([sys.executable, "-m", "jzi.runtime.run_cli", *map(str, common), "--out", str(out),
                               *(["--shard", "0/2"] if i == 0 else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **({"RANK": "1", "WORLD_SIZE": "2"} if i else {})})
             for i in range(2)]
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        assert f"shard {i}/2" in stdout
    assert not out.exists()
    r = _run(*common, "--out", out)  # every chunk is there: this only writes the table
    assert r.returncode == 1 and "40 photos, 1 failed" in r.stdout
    assert out.read_bytes() == one.read_bytes()


def test_bad_batch_options_are_one_line(tmp_path, photo_csv, bundle, store32):  # noqa: F811
    common = ["--engine", bundle, "--tiles", store32, photo_csv]
    for extra, why in [(["--out", tmp_path / "x.txt"], "must end in .parquet or .csv"),
                       (["--shard", "0/2"], "add --out"),
                       (["--out", tmp_path / "x.csv", "--shard", "2/2"], "--shard 2/2"),
                       (["--out", tmp_path / "x.csv", "--shard", "0/2", "--ray"], "do not mix"),
                       (["--out", tmp_path / "x.csv", "--json"], "--json"),
                       (["--out", tmp_path / "x.csv", "--chunk-size", "0"], "chunk-size")]:
        r = _run(*common, *extra)
        assert r.returncode == 1 and why in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    r = _run(*common, "--out", tmp_path / "y.csv", env={"JOB_COMPLETION_INDEX": "1"})
    assert r.returncode == 1 and "WORLD_SIZE" in r.stderr


def test_missing_ray_is_one_clear_line(tmp_path, bundle, store32, monkeypatch, capsys):  # noqa: F811
    from jzi.runtime import tiles_cli

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    assert tiles_cli.main(["build", "--engine", str(bundle), "--source", "x.tif", "-o", str(tmp_path / "s.jzt"),
                           "--ray"]) == 1
    assert run_cli.main(["--engine", str(bundle), "--tiles", str(store32), "x.jpg", "--out",
                         str(tmp_path / "r.csv"), "--ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("Ray is not installed: pip install 'jzi[ray]'" in line for line in err)
