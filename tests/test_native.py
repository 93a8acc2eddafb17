"""The C++ runtime (cpp_bindings/) against the Python one: same answers, same refusals.

Everything native here comes from the built module ``jzi.native`` (``make native`` or
``pip install ./cpp_bindings``; CI builds it): the Python module, the C API (libjzi through ctypes)
and ``jzi-run-native``. The tests build nothing themselves and skip, saying why, only when the
module is not installed.
"""
import ctypes
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, make_photos, rt_base, store16, store32  # noqa: F401

from jzi.runtime.backends import BackendUnavailable
from jzi.runtime.bundle import BundleError
from jzi.runtime.images import ImageError
from jzi.runtime.localizer import Localizer, LocalizerError
from jzi.runtime.tiles import TileStore, TileStoreError, write_store

if importlib.util.find_spec("jzi.native") is None:
    pytest.skip("jzi.native is not built: run `make native` (or pip install ./cpp_bindings)", allow_module_level=True)
import jzi.native as native  # noqa: E402  (a broken build fails here instead of skipping)

N_PHOTOS = 200
BEAMS = (1, 4)


# ---- shared inputs and the Python runtime's answers -------------------------------------------------
@pytest.fixture(scope="module")
def photo_dir(rt_base):  # noqa: F811
    """200 street-photo stand-ins of varied sizes (crops of 40 rendered ones, rescaled), half PNG and half
    JPEG, so that decoding and the stretch to S x 2S are compared too."""
    folder = rt_base / "native_photos"
    if not folder.is_dir():
        tmp = rt_base / "native_photos.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        base, rng = make_photos(rt_base, 40), np.random.default_rng(7)
        for i in range(N_PHOTOS):
            src = base[i % len(base)]
            y, x = rng.integers(0, 24), rng.integers(0, 50)
            crop = src[y:y + 72, x:x + 150]
            size = (int(rng.integers(40, 400)), int(rng.integers(30, 200)))
            img = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(tmp / f"q{i:03d}.{'png' if i % 2 else 'jpg'}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        tmp.rename(folder)
    return folder


@pytest.fixture(scope="module")
def photos(photo_dir):
    return sorted(photo_dir.iterdir())


@pytest.fixture(scope="module")
def python_answers(bundle, store16, photos):  # noqa: F811
    """The Python Localizer's answers, one photo per call, greedy and beam search."""
    loc = Localizer(bundle, store16, backend="ort-cpu", threads=1)
    return {beams: [loc.localize(p, beams=beams) for p in photos] for beams in BEAMS}


def _assert_same(py, nat, where: str) -> None:
    """Paths equal, step probabilities within 1e-6, latitude/longitude within 1e-9 degrees (and candidates)."""
    assert nat.path == py.path, f"{where}: path {nat.path} != {py.path}"
    assert np.max(np.abs(np.subtract(nat.step_probs, py.step_probs))) <= 1e-6, where
    assert abs(nat.latitude - py.latitude) <= 1e-9 and abs(nat.longitude - py.longitude) <= 1e-9, where
    assert abs(nat.confidence - py.confidence) <= 1e-6, where
    assert len(nat.candidates) == len(py.candidates), where
    for c, d in zip(nat.candidates, py.candidates):
        assert c.path == d.path and abs(c.probability - d.probability) <= 1e-6 and abs(c.score - d.score) <= 1e-6, where
        assert abs(c.latitude - d.latitude) <= 1e-9 and abs(c.longitude - d.longitude) <= 1e-9, where


# ---- same answers ------------------------------------------------------------------------------------
def test_preprocessing_is_bit_identical(photos):
    from jzi.runtime.images import read_image, street_input

    for p in photos[:20]:
        rgb = read_image(p)
        assert np.array_equal(native.read_image(str(p)), rgb), p
        assert np.array_equal(native.street_input(rgb, 64), street_input(rgb, 64)), p


@pytest.mark.parametrize("beams", BEAMS)
def test_python_module_gives_the_same_answers(bundle, store16, photos, python_answers, beams):  # noqa: F811
    loc = native.Localizer(bundle, store16, backend="ort-cpu", threads=1)
    for p, py in zip(photos, python_answers[beams]):
        nat = loc.localize(p, beams=beams)
        _assert_same(py, nat, p.name)
        assert set(nat.timings) == set(py.timings)
    # the other inputs the Python API takes: encoded bytes and RGB arrays
    assert loc.localize(photos[0].read_bytes(), beams).path == python_answers[beams][0].path
    assert loc.localize(cv2.imread(str(photos[1]))[..., ::-1], beams).path == python_answers[beams][1].path


def test_batches_and_the_zoom_loop_agree(bundle, store16, photos):  # noqa: F811
    py = Localizer(bundle, store16, backend="ort-cpu", threads=1)
    nat = native.Localizer(bundle, store16, backend="ort-cpu", threads=1)
    for a, b in zip(py.localize_batch(photos[:8], beams=2), nat.localize_batch(photos[:8], beams=2)):
        _assert_same(a, b, "batch of 8")
    query = np.random.default_rng(3).standard_normal((5, 96), dtype=np.float32)
    for beams in BEAMS:
        for a, b in zip(py.zoom(query, beams), nat.zoom(query, beams)):
            _assert_same(a, b, f"zoom beams={beams}")


class _Candidate(ctypes.Structure):
    _fields_ = [("latitude", ctypes.c_double), ("longitude", ctypes.c_double), ("path", ctypes.c_int32 * 12),
                ("score", ctypes.c_double), ("probability", ctypes.c_double)]


class _Timings(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in ("read_ms", "preprocess_ms", "encoder_ms", "tiles_ms", "decoder_ms",
                                                      "zoom_ms", "total_ms")] + [
        ("decoder_steps_ms", ctypes.c_double * 12), ("batch", ctypes.c_int32)]


class _Result(ctypes.Structure):
    _fields_ = [("latitude", ctypes.c_double), ("longitude", ctypes.c_double), ("steps", ctypes.c_int32),
                ("path", ctypes.c_int32 * 12), ("step_probs", ctypes.c_double * 12), ("confidence", ctypes.c_double),
                ("n_candidates", ctypes.c_int32), ("candidates", ctypes.POINTER(_Candidate)),
                ("timings", _Timings)]


class _Options(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_char_p), ("threads", ctypes.c_int), ("verify_bundle", ctypes.c_int),
                ("max_pixels", ctypes.c_int64)]


def test_c_api_gives_the_same_answers(bundle, store16, photos, python_answers):  # noqa: F811
    from jzi.runtime.localizer import Candidate, Localization

    lib = ctypes.CDLL(str(native.library_path()))
    lib.jzi_last_error.restype = ctypes.c_char_p
    opts = _Options()
    lib.jzi_options_init(ctypes.byref(opts))
    opts.backend, opts.threads = b"ort-cpu", 1
    handle = ctypes.c_void_p()
    assert lib.jzi_localizer_create(str(bundle).encode(), str(store16).encode(), ctypes.byref(opts), ctypes.byref(handle)) == 0
    try:
        for beams in BEAMS:
            for p, py in zip(photos, python_answers[beams]):
                r = _Result()
                assert lib.jzi_localize_file(handle, str(p).encode(), beams, ctypes.byref(r)) == 0, lib.jzi_last_error()
                cands = [Candidate(c.latitude, c.longitude, list(c.path[:r.steps]), c.score, c.probability)
                         for c in (r.candidates[i] for i in range(r.n_candidates))]
                nat = Localization(r.latitude, r.longitude, list(r.path[:r.steps]), list(r.step_probs[:r.steps]),
                                   r.confidence, cands)
                lib.jzi_result_clear(ctypes.byref(r))
                _assert_same(py, nat, f"C API {p.name} beams={beams}")
        r = _Result()
        assert lib.jzi_localize_file(handle, b"/no/such/photo.jpg", 1, ctypes.byref(r)) == 3  # JZI_ERR_IMAGE
        assert lib.jzi_last_error().decode().startswith("/no/such/photo.jpg: cannot read")
    finally:
        lib.jzi_localizer_destroy(handle)


def _cli(program, *args):
    return subprocess.run([*program, *map(str, args)], capture_output=True, text=True, timeout=600)


NATIVE_CLI = [str(native.cli_path())]
PYTHON_CLI = [sys.executable, "-m", "jzi.runtime.run_cli"]


def _json_lines(stdout: str) -> tuple[list[dict], dict]:
    """(one record per answer or failure, the closing summary line) of a --json run: JSON Lines."""
    records = [json.loads(line) for line in stdout.splitlines()]
    assert records and set(records[-1]) == {"summary", "failed", "backend", "interrupted"}, records[-1:]
    return records[:-1], records[-1]


@pytest.mark.parametrize("beams", BEAMS)
def test_cli_json_gives_the_same_answers(tmp_path, bundle, store16, photo_dir, photos, beams):  # noqa: F811
    # a CSV with truth as well as the folder: errors in metres and the recall summary are compared too
    csv = tmp_path / "truth.csv"
    csv.write_text("path,latitude,longitude\n" + "".join(f"{p},38.9,-77.0{i % 3}\n" for i, p in enumerate(photos[:10])))
    runs = []
    for program in (PYTHON_CLI, NATIVE_CLI):
        r = _cli(program, "--engine", bundle, "--tiles", store16, "--threads", 1, "--beams", beams, "--json", photo_dir, csv)
        assert r.returncode == 0, r.stderr
        runs.append(_json_lines(r.stdout))
    (py, py_end), (nat, nat_end) = runs
    assert nat_end["backend"].startswith("ort-cpu") and nat_end["failed"] == py_end["failed"] == []
    assert nat_end["interrupted"] is py_end["interrupted"] is False
    assert [x["image"] for x in nat] == [x["image"] for x in py]
    assert len(nat) == N_PHOTOS + 10
    for a, b in zip(py, nat):
        assert list(a) == list(b) and set(a["timings"]) == set(b["timings"])
        assert a["path"] == b["path"] and np.allclose(a["step_probs"], b["step_probs"], rtol=0, atol=1e-6)
        assert abs(a["latitude"] - b["latitude"]) <= 1e-9 and abs(a["longitude"] - b["longitude"]) <= 1e-9
        assert [c["path"] for c in a["candidates"]] == [c["path"] for c in b["candidates"]]
        assert abs(a.get("error_m", 0) - b.get("error_m", 0)) <= 1e-6
    assert nat_end["summary"].keys() == py_end["summary"].keys()
    assert all(abs(nat_end["summary"][k] - py_end["summary"][k]) <= 1e-6 for k in py_end["summary"])


def test_cli_json_lists_failures_and_resumes_alike(tmp_path, bundle, store16, photos):  # noqa: F811
    """Failures are JSON lines too (and stderr lines); --resume skips what an earlier run (of either
    program) answered, and says so in the same line."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in photos[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    first = _cli(PYTHON_CLI, "--engine", bundle, "--tiles", store16, "--threads", 1, "--json", folder / photos[0].name)
    previous = tmp_path / "run.jsonl"
    previous.write_text(first.stdout)
    outs = []
    for program, name in ((PYTHON_CLI, "jzi-run"), (NATIVE_CLI, "jzi-run-native")):
        r = _cli(program, "--engine", bundle, "--tiles", store16, "--threads", 1, "--json", "--resume", previous, folder)
        assert r.returncode == 1
        records, end = _json_lines(r.stdout)
        outs.append(([(x["image"], x.get("error"), x.get("path")) for x in records], end["failed"], r.stderr.replace(name + ":", "PROG:")))
    assert outs[1] == outs[0]
    records, failed, err = outs[1]
    assert [x[0] for x in records] == [str(folder / p.name) for p in photos[1:3]] + [str(folder / "zz_broken.png")]
    assert failed == [{"image": str(folder / "zz_broken.png"), "error": f"{folder / 'zz_broken.png'}: PNG without an IHDR header"}]
    assert err.splitlines() == [f"PROG: resuming: 1 photos already answered in {previous}", f"PROG: {failed[0]['error']}"]


def test_cli_text_geojson_and_exit_codes(tmp_path, bundle, store16, photos):  # noqa: F811
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(photos[0], folder / "a_good.jpg")
    (folder / "b_broken.jpg").write_bytes(b"garbage")
    outs = []
    for program, name in ((PYTHON_CLI, "jzi-run"), (NATIVE_CLI, "jzi-run-native")):
        geo = tmp_path / name / "answers.geojson"  # each program's own folder: "wrote ... to" names it
        r = _cli(program, "--engine", bundle, "--tiles", store16, "--threads", 1, "--beams", 2, "--geojson", geo,
                 folder, tmp_path / "missing.jpg")
        assert r.returncode == 1
        assert sorted(p.name for p in geo.parent.iterdir()) == ["answers.geojson"]  # no temporary file left
        outs.append((r.stdout.replace(str(geo.parent), "OUT"), r.stderr.replace(name + ":", "PROG:"), json.loads(geo.read_text())))
    (py_out, py_err, py_geo), (nat_out, nat_err, nat_geo) = outs
    assert nat_out == py_out and nat_err == py_err and len(nat_err.splitlines()) == 2
    assert nat_out.splitlines()[-1] == "wrote 1 answers to OUT/answers.geojson"
    assert nat_geo["failed"] == py_geo["failed"] and len(nat_geo["failed"]) == 2 and nat_geo["interrupted"] is False
    assert [f["properties"]["path"] for f in nat_geo["features"]] == [f["properties"]["path"] for f in py_geo["features"]]
    assert nat_geo["features"][0]["geometry"]["coordinates"] == pytest.approx(py_geo["features"][0]["geometry"]["coordinates"], abs=1e-9)


# ---- same refusals -----------------------------------------------------------------------------------
def _edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


BUNDLE_CASES = {
    "edited graph": lambda d: (d / "decoder.onnx").write_bytes((d / "decoder.onnx").read_bytes()[:-1] + b"\0"),
    "missing graph file": lambda d: (d / "view_encoder.onnx").unlink(),
    "graph not listed": lambda d: _edit_json(d / "manifest.json", lambda m: m["files"].pop("decoder")),
    "path outside": lambda d: _edit_json(d / "manifest.json", lambda m: m["files"]["decoder"].update(path="../x.onnx")),
    "not JSON": lambda d: (d / "manifest.json").write_text("{nope"),
    "not a manifest": lambda d: (d / "manifest.json").write_text("[1, 2]"),
    "newer format": lambda d: _edit_json(d / "manifest.json", lambda m: m.update(format_version=2)),
    "key missing": lambda d: _edit_json(d / "manifest.json", lambda m: m.pop("encoder_id")),
    "no manifest": lambda d: (d / "manifest.json").unlink(),
}

STORE_CASES = {
    "path escapes": lambda d, m: m["files"]["embeddings"].update(path="../../etc/passwd"),
    "wrong shape": lambda d, m: m["files"]["embeddings"].update(shape=[4369, 4]),
    "wrong dtype": lambda d, m: m["files"]["embeddings"].update(dtype="float64"),
    "steps disagree": lambda d, m: m.update(steps=5),
    "negative dim": lambda d, m: m.update(dim=-3),
    "bool dim": lambda d, m: m.update(dim=True),
    "levels edited": lambda d, m: m["levels"][1].update(offset=3),
    "newer format": lambda d, m: m.update(format_version=99),
    "no encoder_id": lambda d, m: m.pop("encoder_id"),
    "unknown role": lambda d, m: m["files"].update(extra={"path": "x"}),
    "big-endian": lambda d, m: m["files"]["embeddings"].update(byte_order="big"),
    "bad pixels": lambda d, m: m["files"].update(pixels={"shape": [4369, 999, 999, 3]}),
    "truncated": lambda d, m: (d / "embeddings.f32").write_bytes(b"\0" * 100),
    "region not a dict": lambda d, m: m.update(region=[1, 2]),
}


def _python_and_native(make):
    """(type, message) of the error each side raises for ``make(side)``; None where it raised nothing.

    A JSON parser's own detail (Python's json vs nlohmann::json) is the one part of a message that may differ.
    """
    out = []
    for side in ("python", "native"):
        try:
            make(side)
            out.append(None)
        except (BundleError, TileStoreError, LocalizerError, ImageError, BackendUnavailable) as e:
            out.append((type(e), re.sub(r"not valid JSON \(.*\)$", "not valid JSON (...)", str(e))))
    return out


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_tampered_bundles_are_refused_alike(tmp_path, bundle, store16, case):  # noqa: F811
    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    BUNDLE_CASES[case](bad)
    py, nat = _python_and_native(lambda side: (Localizer if side == "python" else native.Localizer)(bad, store16))
    assert py is not None and py[0] is BundleError
    assert nat == py and "\n" not in nat[1]


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_malformed_stores_are_refused_alike(tmp_path, store32, case):  # noqa: F811
    bad = tmp_path / "store.jzt"
    shutil.copytree(store32, bad)
    meta = json.loads((bad / "tiles.json").read_text())
    STORE_CASES[case](bad, meta)
    (bad / "tiles.json").write_text(json.dumps(meta))
    py, nat = _python_and_native(lambda side: (TileStore if side == "python" else native.TileStore)(bad))
    assert py is not None and py[0] is TileStoreError
    assert nat == py and "\n" not in nat[1]


def test_mismatched_pairs_are_refused_alike(tmp_path, bundle, store32):  # noqa: F811
    good = TileStore(store32)
    zeros = lambda rows: (np.zeros((len(rows), good.dim)), None)  # noqa: E731
    other = write_store(tmp_path / "other.jzt", good.region, good.dim, "someone-else", zeros, batch=4096, progress=False)
    shallow = write_store(tmp_path / "shallow.jzt", replace(good.region, steps=3), good.dim, good.encoder_id, zeros,
                          batch=4096, progress=False)
    narrow = write_store(tmp_path / "narrow.jzt", good.region, 8, good.encoder_id, lambda r: (np.zeros((len(r), 8)), None),
                         batch=4096, progress=False)
    for store, why in ((other, "rebuild it with jzi-tiles build"), (shallow, "3 steps"), (narrow, "8-wide")):
        py, nat = _python_and_native(lambda side: (Localizer if side == "python" else native.Localizer)(bundle, store))
        assert py[0] is LocalizerError and why in py[1]
        assert nat == py


def test_bad_images_are_refused_alike(tmp_path, bundle, store16, photos):  # noqa: F811
    py_loc = Localizer(bundle, store16, backend="ort-cpu", threads=1)
    nat_loc = native.Localizer(bundle, store16, backend="ort-cpu", threads=1)
    jpeg = photos[0].read_bytes()
    from test_images import png_with_a_lying_chunk

    png, lying_png, idat = png_with_a_lying_chunk()
    cases = {"chunk-past-the-end.png": lying_png, "cut-in-idat.png": png[:idat + 20],
             "two-spaces.pfm": b"PF\n8  48\n-1\n" + np.ones(8 * 48 * 3, "<f4").tobytes(),
             "garbage.jpg": b"this is not an image", "empty.png": b"", "truncated.jpg": jpeg[:10],
             "cut.jpg": jpeg[:200], "png-head.png": b"\x89PNG\r\n\x1a\n\0\0",
             "comment.ppm": b"P6\n# no line end", "zero.bmp": b"BM" + b"\0" * 30,
             "bomb.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + struct.pack(">II", 100_000, 100_000) + b"\0" * 20,
             "exr.exr": b"\x76\x2f\x31\x01" + b"\0" * 100}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for target in [*(tmp_path / n for n in cases), tmp_path / "missing.jpg", tmp_path]:
        py, nat = _python_and_native(lambda side: (py_loc if side == "python" else nat_loc).localize(target))
        assert py is not None and py[0] is ImageError, target
        assert nat == py, target
    huge = np.zeros((3, 3), np.uint8)
    for side_loc in (py_loc, nat_loc):
        with pytest.raises(ImageError, match="must be"):
            side_loc.localize(np.zeros((3, 3, 2), np.uint8))
        with pytest.raises(LocalizerError, match="beams must be between 1 and 16"):
            side_loc.localize(huge, beams=17)
    with pytest.raises(ImageError, match="over the cap of 100"):
        native.decode_image(jpeg, max_pixels=100)
    from jzi.runtime.images import read_image

    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(8 * 1000 + (1 << 20) + 1)  # sparse: larger than any 1000-pixel image could be
    py, nat = _python_and_native(lambda side: (read_image if side == "python" else native.read_image)(big, max_pixels=1000))
    assert py[0] is ImageError and "larger than any image" in py[1] and nat == py


def _header_corpus() -> dict[str, bytes]:
    """A small image in every format whose size the runtimes read from the header (as this OpenCV writes
    them), plus hand-made headers the encoders do not produce: raw JPEG 2000, BigTIFF, PNM comments,
    PAM fields, Radiance resolution lines, AVIF boxes nested too deep."""
    from test_images import nested_avif_boxes

    bgr = np.random.default_rng(1).integers(0, 255, (48, 80, 3), np.uint8)  # OpenJPEG refuses smaller (and OpenCV leaves its temp file)
    out = {}
    for ext in (".jpg", ".png", ".webp", ".tiff", ".bmp", ".gif", ".jp2", ".avif", ".ppm", ".pgm", ".pam", ".pfm", ".ras", ".hdr"):
        img = bgr.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else bgr[..., 0] if ext == ".pgm" else bgr
        ok, buf = cv2.imencode(ext, img)
        if ok:
            out[ext] = buf.tobytes()
    out["jp2 by hand"] = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 20) + b"ftypjp2 \0\0\0\0jp2 "
                          + struct.pack(">I", 30) + b"jp2h" + struct.pack(">I", 22) + b"ihdr"
                          + struct.pack(">IIHBBBB", 300, 400, 3, 7, 7, 0, 0))
    out["j2k"] = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 400, 300, 10, 20) + b"\x00" * 40
    def bigtiff(width):  # two LONG8 entries: ImageWidth, ImageLength 90
        return (b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2)
                + struct.pack("<HHQQ", 256, 16, 1, width) + struct.pack("<HHQQ", 257, 3, 1, 90))

    out["bigtiff"] = bigtiff(70000)
    for width in (2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1):  # LONG8 widths no int64 holds (once read differently)
        out[f"bigtiff width {width}"] = bigtiff(width)
    out["pnm comments"] = b"P6\n# made by hand\n  # twice\n640\t480\n255\n" + b"\0" * 16
    out["pnm comment to the end"] = b"P6\n# no line end"
    out["pam"] = b"P7\nWIDTH  +1_000 \nHEIGHT 20\nWIDTH 7\nDEPTH 3\nENDHDR\n"
    out["hdr"] = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n+X 640 -Y 480\n"
    out["avif nested"] = nested_avif_boxes(40)
    return out


def _outcome(read, data):
    try:
        return read(data)
    except ImageError as e:
        return "ImageError", str(e)


def test_image_headers_are_read_alike():
    """Every format's header, cut at every length up to 160 bytes and with 300 random byte changes each: the
    same size or the same one-line refusal from both runtimes (what the pixel cap is checked against)."""
    from jzi.runtime.images import header_size

    rng = np.random.default_rng(11)
    corpus = _header_corpus()
    assert {".jpg", ".png", ".webp", ".tiff", ".bmp", ".ppm", ".pfm", ".hdr"} <= set(corpus)  # (this OpenCV may not write .jp2)
    compared = 0
    for name, data in corpus.items():
        variants = [data[:n] for n in range(min(len(data), 160) + 1)]
        for _ in range(300):
            edited = bytearray(data[:400])
            for at in rng.integers(0, min(len(edited), 64), size=int(rng.integers(1, 4))):
                edited[at] = int(rng.integers(0, 256))
            variants.append(bytes(edited))
        for v in variants:
            assert _outcome(native.header_size, v) == _outcome(header_size, v), (name, v[:64])
        compared += len(variants)
    assert compared > 6000


@pytest.mark.parametrize("args, why", [
    (("--engine", "NOBUNDLE", "--tiles", "STORE", "PHOTO"), "does not exist"),
    (("--engine", "PHOTO", "--tiles", "STORE", "PHOTO"), "not a bundle directory"),
    (("--engine", "BUNDLE", "--tiles", "NOSTORE", "PHOTO"), "not a tile store"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "PHOTO", "--backend", "tensorrt"), "tensorrt backend not available"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "PHOTO", "--beams", "0"), "--beams"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "PHOTO", "--beams", "17"), "beams must be between 1 and 16"),
    (("--engine", "BUNDLE", "--tiles", "STORE", "EMPTYCSV"), "no photos given"),
])
def test_cli_setup_errors_are_the_same_line(tmp_path, bundle, store16, photos, args, why):  # noqa: F811
    (tmp_path / "empty.csv").write_text("path,latitude\n")
    subst = {"NOBUNDLE": tmp_path / "nb", "BUNDLE": bundle, "STORE": store16, "NOSTORE": tmp_path / "ns",
             "PHOTO": photos[0], "EMPTYCSV": tmp_path / "empty.csv"}
    argv = [subst.get(a, a) for a in args]
    py, nat = _cli(PYTHON_CLI, *argv), _cli(NATIVE_CLI, *argv)
    assert py.returncode == nat.returncode == 1
    assert why in nat.stderr and nat.stderr.replace("jzi-run-native:", "jzi-run:") == py.stderr, nat.stderr
    assert len(nat.stderr.strip().splitlines()) == 1


def test_jzi_run_backend_native_prints_the_same(bundle, store16, photos):  # noqa: F811
    args = ("--engine", bundle, "--tiles", store16, "--threads", 1, "--beams", 3, *photos[:4])
    py, nat = _cli(PYTHON_CLI, *args), _cli(PYTHON_CLI, *args, "--backend", "native")
    assert py.returncode == nat.returncode == 0, nat.stderr
    assert nat.stdout == py.stdout and len(nat.stdout.splitlines()) == 4


def _drawn(program, tmp_path, name, bundle, tiles, photo, truth):  # noqa: F811
    csv, out = tmp_path / f"{name}.csv", tmp_path / f"{name}.png"
    csv.write_text(f"path,latitude,longitude\n{photo},{truth[0]!r},{truth[1]!r}\n")
    r = _cli(program, "--engine", bundle, "--tiles", tiles, "--threads", 1, "--viz", out, csv)
    assert r.returncode == 0 and f"zoom path drawn to {out}" in r.stdout, r.stderr
    return cv2.imread(str(out)).astype(np.int16)


def test_cli_draws_the_same_zoom_path(tmp_path, bundle, store32, photos):  # noqa: F811
    """The same picture but for the shapes of its words. jzi-run draws with the wheel's OpenCV 5, whose new
    text engine renders the Hershey font names in another font with other widths; Debian's OpenCV 4.6 draws
    Hershey strokes (benchmarks/RESULTS.md, issue 10: every other primitive the picture uses is
    pixel-identical across the two, and Python's drawing code run with OpenCV 4.6 gives this picture
    exactly). So the panels are compared pixel for pixel wherever no words are drawn, and the words only
    for being there."""
    from jzi.runtime.geometry import Region
    from jzi.runtime.viz import PANEL, truth_offset

    good = TileStore(store32)
    rng = np.random.default_rng(5)
    thumbs = write_store(tmp_path / "thumbs.jzt", good.region, good.dim, good.encoder_id,
                         lambda r: (np.asarray(good.embeddings[r], np.float32), rng.integers(0, 255, (len(r), 64, 64, 3), np.uint8)),
                         dtype="float32", thumb_px=16, batch=4096, progress=False)
    panels = slice(28, 28 + PANEL)  # titles above, caption and legend below
    answer = Localizer(bundle, thumbs, threads=1).localize(photos[3])
    region: Region = good.region
    h, w = cv2.imread(str(photos[3])).shape[:2]
    first_view_x = 8 + min(2 * PANEL, max(1, round(w * PANEL / h))) + 8
    for name, truth in (("inside", (answer.latitude, answer.longitude)), ("outside", (38.9, -76.99))):
        py, nat = (_drawn(program, tmp_path, f"{name}-{kind}", bundle, thumbs, photos[3], truth)
                   for program, kind in ((PYTHON_CLI, "py"), (NATIVE_CLI, "native")))
        assert py.shape == nat.shape
        same = np.ones(py.shape[:2], bool)
        same[:panels.start] = same[panels.stop:] = False
        centres = region.view_centers(answer.path)
        for lvl in range(region.steps):  # a truth outside a view: an arrow at its edge, the distance in words by it
            x, y = truth_offset(region, centres[lvl], lvl, truth, PANEL)
            if not (0 <= x <= PANEL and 0 <= y <= PANEL):
                c = PANEL / 2
                k = (c - 6) / max(abs(x - c), abs(y - c)) * 0.72  # the arrow's tail, where its label goes
                tx, ty = first_view_x + lvl * (PANEL + 8) + c + (x - c) * k, panels.start + c + (y - c) * k
                same[max(0, int(ty) - 40):int(ty) + 40, max(0, int(tx) - 80):int(tx) + 80] = False
        if name == "inside":
            assert same[panels].all()  # the truth on every view: no words on the panels
        else:
            assert not same[panels].all()
        assert np.array_equal(py[same], nat[same]), (name, np.argwhere(py[..., 0] != nat[..., 0])[:5])
        for pic in (py, nat):  # the titles, the caption and the legend are written
            assert (pic[:panels.start] < 100).sum() > 200 and (pic[panels.stop:] < 100).sum() > 1000
    r = _cli(NATIVE_CLI, "--engine", bundle, "--tiles", store32, "--viz", tmp_path / "x.png", photos[0])
    assert r.returncode == 1 and "--viz needs view pixels" in r.stderr
