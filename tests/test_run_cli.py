"""jzi-run as a user runs it: photos, folders, CSVs with truth, --json, --geojson, --viz, bad input."""
import csv
import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, make_photos, rt_base, store16, store32  # noqa: F401

from jzi.runtime.geometry import distance_m
from jzi.runtime.localizer import Localizer


def _run(*args):
    return subprocess.run([sys.executable, "-m", "jzi.runtime.run_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, rt_base):  # noqa: F811
    """Photos in the authors' layout: metadata/test.csv + streetview/images/{id}_undistorted.jpg."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "streetview" / "images").mkdir(parents=True)
    (root / "metadata").mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for i, photo in enumerate(make_photos(rt_base, 6, seed=5)):
        image_id = f"q{i:03d}"
        cv2.imwrite(str(root / "streetview" / "images" / f"{image_id}_undistorted.jpg"),
                    cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        lat, lon = 38.8936 + rng.uniform(-0.03, 0.03), -76.9886 + rng.uniform(-0.03, 0.03)
        rows.append({"image_id": image_id, "latitude": f"{lat:.7f}", "longitude": f"{lon:.7f}",
                     "sequence": "[0, 0, 0, 0]"})
    with open(root / "metadata" / "test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_csv_with_truth_prints_errors_and_recall(dataset, bundle, store32):  # noqa: F811
    r = _run("--engine", bundle, "--tiles", store32, dataset / "metadata" / "test.csv", "--threads", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 7
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    truth = list(csv.DictReader(open(dataset / "metadata" / "test.csv")))
    errors = []
    for line, row in zip(lines, truth):
        m = re.match(r"^(\S+)  (-?[\d.]+), (-?[\d.]+)  error ([\d.]+) m", line)
        assert m and m.group(1) == row["image_id"], line
        expect = loc.localize(dataset / "streetview" / "images" / f"{row['image_id']}_undistorted.jpg")
        assert float(m.group(2)) == pytest.approx(expect.latitude, abs=1e-6)
        err = float(distance_m([expect.latitude, expect.longitude], [float(row["latitude"]), float(row["longitude"])]))
        assert float(m.group(4)) == pytest.approx(err, abs=0.06)
        errors.append(err)
    r100 = 100 * np.mean(np.array(errors) <= 100)
    assert lines[-1].startswith("6 photos with truth: R@40m") and f"R@100m {r100:.1f}%" in lines[-1]


def test_json_geojson_and_beams(tmp_path, dataset, bundle, store32):  # noqa: F811
    images = dataset / "streetview" / "images"
    gj = tmp_path / "out" / "answers.geojson"
    r = _run("--engine", bundle, "--tiles", store32, images, "--json", "--beams", "3", "--geojson", gj)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # JSON Lines: one answer per line, then a summary
    results, end = lines[:-1], lines[-1]
    assert len(results) == 6 and end["summary"] is None and end["failed"] == [] and end["interrupted"] is False
    first = results[0]
    assert len(first["candidates"]) == 3 and first["path"] == first["candidates"][0]["path"]
    assert first["candidates"][0]["score"] >= first["candidates"][1]["score"] >= first["candidates"][2]["score"]
    assert set(first["timings"]) >= {"encoder_ms", "decoder_steps_ms", "tiles_ms", "total_ms"}
    geo = json.loads(gj.read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 6
    pt = geo["features"][0]
    assert pt["geometry"]["coordinates"] == pytest.approx([first["longitude"], first["latitude"]])
    assert len(pt["properties"]["candidates"]) == 3 and geo["failed"] == []
    assert r.stderr.strip() == f"wrote 6 answers to {gj}"  # stdout stays pure JSON Lines

    r = _run("--engine", bundle, "--tiles", store32, images / "q000_undistorted.jpg", "--beams", "3", "--geojson", gj)
    assert r.returncode == 0, r.stderr
    answer, wrote = r.stdout.strip().splitlines()
    top = answer.split("top-3: ")[1].split("; ")
    assert len(top) == 3 and answer.split("  ")[1] == top[0].split(" (")[0]  # the answer is the first of the top-3
    assert wrote == f"wrote 1 answers to {gj}"


def test_viz_draws_the_zoom_path(tmp_path, dataset, bundle, store16, geotiff):  # noqa: F811
    out = tmp_path / "zoom.png"
    photo = dataset / "streetview" / "images" / "q000_undistorted.jpg"
    r = _run("--engine", bundle, "--tiles", store16, photo, "--viz", out)
    assert r.returncode == 1 and "--thumbs" in r.stderr and not out.exists()  # no pixels in this store
    r = _run("--engine", bundle, "--tiles", store16, photo, "--viz", out, "--source", tmp_path / "no.tif")
    assert r.returncode == 1 and r.stdout == "" and "no such imagery" in r.stderr  # refused before any answer
    r = _run("--engine", bundle, "--tiles", store16, dataset / "metadata" / "test.csv", "--viz", out,
             "--source", geotiff)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] == 256 + 84 and img.shape[1] > 4 * 256
    # the chosen-cell frames are drawn in the highlight colour, the truth marker in red
    rgb = img[..., ::-1]
    assert ((rgb == (255, 210, 0)).all(-1)).sum() > 500
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_photos_are_one_line_each_and_the_rest_go_on(tmp_path, dataset, bundle, store32):  # noqa: F811
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = dataset / "streetview" / "images" / "q001_undistorted.jpg"
    (folder / "a_good.jpg").write_bytes(good.read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"garbage")
    (folder / "c_good.png").write_bytes(cv2.imencode(".png", cv2.imread(str(good)))[1].tobytes())
    r = _run("--engine", bundle, "--tiles", store32, folder, tmp_path / "missing.jpg")
    assert r.returncode == 1
    assert len(r.stdout.strip().splitlines()) == 2 and "a_good.jpg" in r.stdout and "c_good.png" in r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "b_broken.jpg" in err[0] and "missing.jpg" in err[1] and "Traceback" not in r.stderr

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image_id,latitude,longitude\nq000,notanumber,1\n")
    r = _run("--engine", bundle, "--tiles", store32, bad_csv)
    assert r.returncode == 1 and "bad latitude/longitude" in r.stderr


@pytest.mark.parametrize("args, why", [
    (("--engine", "NOBUNDLE", "--tiles", "STORE", "PHOTO"), "nb: does not exist"),
    (("--engine", "PHOTO", "--tiles", "STORE", "PHOTO"), "not a bundle directory"),
    (("--engine", "BUNDLE", "--tiles", "NOSTORE", "PHOTO"), "not a tile store"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "PHOTO", "--backend", "tensorrt"), "tensorrt backend not available"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "PHOTO", "--beams", "0"), "--beams"),
])
def test_bad_setup_is_one_clear_line(tmp_path, dataset, bundle, store32, args, why):  # noqa: F811
    subst = {"NOBUNDLE": tmp_path / "nb", "BUNDLE": bundle, "STORE": store32, "NOSTORE": tmp_path / "ns",
             "PHOTO": dataset / "streetview" / "images" / "q000_undistorted.jpg"}
    r = _run(*[subst.get(a, a) for a in args])
    assert r.returncode != 0 and why in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """make demo's script on the smallest world with a token training budget: every step, every output."""
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "jzi.export.demo", "--out", str(out), "--world", "tiny",
                        "--street-epochs", "1", "--epochs", "1"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "answers.csv", newline="") as f:
        answers = list(csv.DictReader(f))
    assert len(answers) == 16 and all(float(a["error_m"]) >= 0 for a in answers)  # every held-out photo
    summary = r.stdout[r.stdout.index("Results on 16 held-out test photos"):]
    for row in ("answer within 40 m (R@40m)", "answer within 100 m (R@100m)", "first step right (1 of 16 cells)",
                "median error", "median confidence", "Confidence is the model's probability"):
        assert row in summary, row
    assert len(summary.splitlines()) < 30  # fits on a screen: no line per photo
    assert f"{out / 'answers.csv'}" in summary and "--beams 4" in summary and "--viz" in summary
    assert cv2.imread(str(out / "zoom_path.png")) is not None
    # a second run reuses every step
    again = subprocess.run([sys.executable, "-m", "jzi.export.demo", "--out", str(out), "--world", "tiny"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("reusing") == 4


def _in_process(capsys, *args):
    from jzi.runtime import run_cli

    rc = run_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _strict_loads(text):
    def no_constants(name):
        raise AssertionError(f"non-JSON token {name}")
    return json.loads(text, parse_constant=no_constants)


@pytest.fixture
def many_photos(tmp_path, dataset):
    folder = tmp_path / "photos"
    folder.mkdir()
    src = sorted((dataset / "streetview" / "images").iterdir())
    for i in range(12):
        (folder / f"p{i:02d}.jpg").write_bytes(src[i % len(src)].read_bytes())
    (folder / "p05.jpg").write_bytes(b"not an image")  # one failure among them
    return folder


def test_interrupted_json_and_geojson_keep_their_answers_and_resume(tmp_path, capsys, monkeypatch, many_photos,
                                                                     bundle, store32):  # noqa: F811
    from jzi.runtime import run_cli

    gj = tmp_path / "out.geojson"
    real = run_cli.load_rgb
    calls = []

    def dies_at_the_eighth(path, *a):
        calls.append(path)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(path, *a)

    monkeypatch.setattr(run_cli, "load_rgb", dies_at_the_eighth)
    common = ("--engine", bundle, "--tiles", store32, many_photos, "--threads", "1")
    rc, out, err = _in_process(capsys, *common, "--json", "--geojson", gj)
    assert rc == 130 and "interrupted" in err and len(err.strip().splitlines()) == 2  # the bad photo + the interrupt
    first = [_strict_loads(line) for line in out.splitlines()]
    answered = [x["image"] for x in first if "latitude" in x]
    assert len(answered) == 6 and first[-1]["interrupted"] is True
    assert first[-1]["failed"] == [{"image": str(many_photos / "p05.jpg"), "error": f"{many_photos / 'p05.jpg'}: "
                                    "not a readable image (unknown format or corrupt data)"}]
    geo = _strict_loads(gj.read_text())  # a complete document although the run was interrupted
    assert [f["properties"]["image"] for f in geo["features"]] == answered and geo["interrupted"] is True
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text(out)

    monkeypatch.setattr(run_cli, "load_rgb", real)
    rc, out, err = _in_process(capsys, *common, "--json", "--resume", jsonl)
    assert rc == 1 and "resuming: 6 photos already answered" in err  # p05 fails again: exit 1
    rest = [_strict_loads(line) for line in out.splitlines()]
    again = [x["image"] for x in rest if "latitude" in x]
    assert len(again) == 5 and not set(again) & set(answered)
    rc, out, err = _in_process(capsys, *common, "--geojson", gj, "--resume", gj)
    geo = _strict_loads(gj.read_text())
    assert len(geo["features"]) == 11 and geo["interrupted"] is False and len(geo["failed"]) == 1
    # every photo answered once across the runs, each with the serial answer
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    by_name = {f["properties"]["image"]: f["geometry"]["coordinates"] for f in geo["features"]}
    for name, (lon, lat) in by_name.items():
        r = loc.localize(name)
        assert (lat, lon) == pytest.approx((r.latitude, r.longitude), abs=1e-12)


def test_resume_refuses_a_file_that_is_not_an_output(tmp_path, capsys, many_photos, bundle, store32):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n{}\n")
    rc, out, err = _in_process(capsys, "--engine", bundle, "--tiles", store32, many_photos, "--json", "--resume", bad)
    assert rc == 1 and "bad.jsonl:1: not a jzi-run --json line" in err and out == ""
