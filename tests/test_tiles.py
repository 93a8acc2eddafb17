"""Tile store: layout, atomic and resumable builds, validation of untrusted stores, jzi-tiles CLI."""
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, rt_base, store32  # noqa: F401

from jzi.runtime import tiles as T
from jzi.runtime.geometry import Region
from jzi.runtime.tiles import TileStore, TileStoreError, verify_store, view_geometry, write_store

SMALL = replace(Region.default(), steps=3, view_px=16)  # 1 + 16 + 256 = 273 views
DIM = 8


def _values(rows):
    """Deterministic embeddings that encode the row number, so misplaced rows show."""
    rows = np.asarray(rows, dtype=np.float32)
    return np.stack([rows + i / 10 for i in range(DIM)], axis=1)


def _produce(rows):
    return _values(rows), np.full((len(rows), 16, 16, 3), 7, np.uint8)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jzi.runtime.tiles_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_layout_rows_and_children_are_contiguous(tmp_path):
    out = write_store(tmp_path / "s.jzt", SMALL, DIM, "enc", _produce, dtype="float32", batch=50, progress=False,
                      thumb_px=4)
    store = TileStore(out)
    assert store.embeddings.shape == (273, DIM) and store.embeddings.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(store.embeddings, _values(np.arange(273)))
    # the children of view (level 1, cell 5) are rows 17 + 5*16 .. 17 + 5*16 + 15
    assert [store.row_of_path([5, c]) for c in range(16)] == list(range(17 + 80, 17 + 96))
    assert store.row_of_path([]) == 0 and store.row_of_path([15]) == 16
    assert store.pixels.shape == (273, 4, 4, 3) and (store.view_pixels([3]) == 7).all()
    meta = json.loads((out / "tiles.json").read_text())
    assert meta["levels"][2] == {"level": 2, "offset": 17, "count": 256, "size_m": 625.0,
                                 "meters_per_pixel": 625.0 / 16}
    # raw little-endian: a plain reader with only the JSON gets the same numbers
    raw = np.fromfile(out / meta["files"]["embeddings"]["path"], dtype="<f4").reshape(meta["files"]["embeddings"]["shape"])
    np.testing.assert_array_equal(raw, store.embeddings)
    assert not (tmp_path / "s.jzt.partial").exists()


def test_fp16_store_and_view_geometry(tmp_path):
    out = write_store(tmp_path / "h.jzt", SMALL, DIM, "enc", _produce, progress=False)
    store = TileStore(out)
    assert store.dtype == "float16" and (out / "embeddings.f16").stat().st_size == 273 * DIM * 2
    np.testing.assert_allclose(store.embeddings, _values(np.arange(273)), rtol=1e-3)
    centres, sizes = view_geometry(SMALL, np.array([0, 1, 17 + 16 * 3 + 2]))
    np.testing.assert_allclose(centres[1], SMALL.path_center([0]))
    np.testing.assert_allclose(centres[2], SMALL.path_center([3, 2]))
    np.testing.assert_allclose(sizes, [10000, 2500, 625])


def test_interrupted_build_resumes_and_only_does_the_rest(tmp_path):
    calls = []

    def dies_after_three(rows):
        calls.append(rows.copy())
        if len(calls) > 3:
            raise KeyboardInterrupt
        return _produce(rows)

    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "r.jzt", SMALL, DIM, "enc", dies_after_three, batch=40, chunk_rows=40, progress=False)
    assert not (tmp_path / "r.jzt").exists()
    assert sorted(p.name for p in (tmp_path / "r.jzt.partial" / "done").iterdir()) == ["00000000", "00000001",
                                                                                       "00000002"]

    resumed = []
    out = write_store(tmp_path / "r.jzt", SMALL, DIM, "enc", lambda r: (resumed.append(r), _produce(r))[1],
                      batch=40, chunk_rows=40, progress=False)
    assert resumed[0][0] == 120 and sum(map(len, resumed)) == 273 - 120
    np.testing.assert_allclose(TileStore(out).embeddings, _values(np.arange(273)), rtol=1e-3)
    assert not (tmp_path / "r.jzt.partial").exists()

    # stopped after finishing but before the rename: the next run only renames
    shutil.copytree(out, tmp_path / "f.jzt.partial")
    assert write_store(tmp_path / "f.jzt", SMALL, DIM, "enc", None, batch=40, progress=False) == tmp_path / "f.jzt"
    assert verify_store(tmp_path / "f.jzt")["ok"] and not (tmp_path / "f.jzt.partial").exists()

    # a partial build made with other settings is refused, then discarded with force
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "q.jzt", SMALL, DIM, "enc", dies_after_three, batch=40, chunk_rows=40, progress=False)
    with pytest.raises(TileStoreError, match="other settings"):
        write_store(tmp_path / "q.jzt", SMALL, DIM, "other-encoder", _produce, progress=False)
    write_store(tmp_path / "q.jzt", SMALL, DIM, "other-encoder", _produce, progress=False, force=True)
    assert TileStore(tmp_path / "q.jzt").encoder_id == "other-encoder"
    with pytest.raises(TileStoreError, match="exists"):
        write_store(tmp_path / "q.jzt", SMALL, DIM, "enc", _produce, progress=False)


def _pixels_of(rows):
    """Views that encode the row number, so thumbnails of misplaced rows show."""
    return np.broadcast_to((np.asarray(rows) % 251).astype(np.uint8)[:, None, None, None], (len(rows), 16, 16, 3)).copy()


def test_rendering_runs_ahead_on_one_side_thread_and_the_bytes_do_not_change(tmp_path):
    """With a render stage, batch i+1 is rendered while batch i is produced (encoded): produce waits for
    the next render to start and would time out without the overlap. Same bytes as one stage."""
    import threading

    started = {}  # first row of a batch -> Event set when its render starts
    render_threads, rendered = set(), []

    def render(rows):
        render_threads.add(threading.get_ident())
        rendered.append(int(rows[0]))
        started.setdefault(int(rows[0]), threading.Event()).set()
        return rows, _pixels_of(rows)

    def produce(rendered):
        rows, views = rendered
        nxt = int(rows[-1]) + 1
        if nxt < SMALL.total_views:
            assert started.setdefault(nxt, threading.Event()).wait(timeout=60), "the next batch was not rendered ahead"
        return _values(rows), views

    out = write_store(tmp_path / "p.jzt", SMALL, DIM, "enc", produce, render=render, batch=30, chunk_rows=64,
                      thumb_px=4, progress=False)
    assert len(render_threads) == 1 and threading.get_ident() not in render_threads
    assert rendered == [a for c in range(0, 273, 64) for a in range(c, min(c + 64, 273), 30)]  # each once, in order
    one_stage = write_store(tmp_path / "o.jzt", SMALL, DIM, "enc", lambda r: (_values(r), _pixels_of(r)), batch=30,
                            chunk_rows=64, thumb_px=4, progress=False)
    for name in ("embeddings.f16", "pixels.u8"):
        assert (out / name).read_bytes() == (one_stage / name).read_bytes()


@pytest.mark.parametrize("error", [RuntimeError("the imagery server went away"), KeyboardInterrupt()])
def test_an_error_while_rendering_reaches_the_caller_and_the_chunks_before_it_are_kept(tmp_path, error):
    calls = []

    def render(rows):
        calls.append(int(rows[0]))
        if len(calls) == 4:
            raise error
        return rows

    with pytest.raises(type(error)) as raised:
        write_store(tmp_path / "e.jzt", SMALL, DIM, "enc", _produce, render=render, batch=40, chunk_rows=40,
                    progress=False)
    assert raised.value is error
    assert sorted(p.name for p in (tmp_path / "e.jzt.partial" / "done").iterdir()) == ["00000000", "00000001",
                                                                                       "00000002"]
    assert calls[:4] == [0, 40, 80, 120] and len(calls) <= 5  # at most the render running when it failed
    out = write_store(tmp_path / "e.jzt", SMALL, DIM, "enc", _produce, render=lambda rows: rows, batch=40,
                      chunk_rows=40, progress=False)
    np.testing.assert_allclose(TileStore(out).embeddings, _values(np.arange(273)), rtol=1e-3)


def test_a_failed_write_on_the_side_thread_stops_the_build(tmp_path):
    produced = []

    def produce(rows):  # chunk 1 comes back with the wrong width, which the writer refuses
        produced.append(int(rows[0]))
        return (_values(rows)[:, :DIM - 1] if 40 <= rows[0] < 80 else _values(rows)), None

    with pytest.raises(TileStoreError, match="chunk 1: the encoder returned"):
        write_store(tmp_path / "w.jzt", SMALL, DIM, "enc", produce, render=lambda rows: rows, batch=40, chunk_rows=40,
                    progress=False)
    assert (tmp_path / "w.jzt.partial" / "done" / "00000000").exists()
    assert not (tmp_path / "w.jzt.partial" / "done" / "00000001").exists()
    assert max(produced) < 240  # it stopped within a few batches, not at the end


def _corrupt(tmp_path, edit):
    """A copy of a good store with ``edit(store_dir, index_dict)`` applied (the index is rewritten)."""
    src = write_store(tmp_path / "ok.jzt", SMALL, DIM, "enc", _produce, progress=False)
    dst = tmp_path / "bad.jzt"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "tiles.json").read_text())
    edit(dst, meta)
    (dst / "tiles.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("edit, why", [
    (lambda d, m: m["files"]["embeddings"].update(path="../../etc/passwd"), "plain file name"),
    (lambda d, m: m["files"]["embeddings"].update(shape=[273, 4]), "shape"),
    (lambda d, m: m["files"]["embeddings"].update(dtype="float64"), "dtype"),
    (lambda d, m: m.update(steps=5), "region.grid/steps/view_px 4/3/16 disagree with grid/steps/view_px 4/5/16"),
    (lambda d, m: m.update(dim=-3), "dim must be an integer"),
    (lambda d, m: m["levels"][1].update(offset=3), "levels"),
    (lambda d, m: m.update(format_version=99), "format_version"),
    (lambda d, m: m.pop("encoder_id"), "encoder_id is missing"),
    (lambda d, m: m["files"].update(extra={**m["files"]["embeddings"]}), "unknown file role"),
    (lambda d, m: (d / "embeddings.f16").write_bytes(b"\0" * 100), "truncated"),
    # the misleading messages: each now names the field that is wrong
    (lambda d, m: m["files"]["embeddings"].update(bytes=5), r"files.embeddings.bytes is 5, shape \[273, 8\] of float16 needs 4368"),
    (lambda d, m: m["region"].update(size_m=-5.0), r"region.size_m must be a finite number in \(0, .*got -5.0"),
    (lambda d, m: m["region"].update(center_lat=float("nan")), "region.center_lat must be a finite number"),
    (lambda d, m: m["files"]["embeddings"]["block_sha256"].pop(), "block_sha256 holds 0 digests"),
    (lambda d, m: m["files"]["embeddings"].update(block_rows=0), "files.embeddings.block_rows must be an integer"),
    (lambda d, m: m["files"]["embeddings"].update(sha256="x"), "files.embeddings.sha256 must be 64 lowercase hex"),
    (lambda d, m: m.update(region="x"), "region must be an object"),
])
def test_untrusted_stores_are_refused_with_one_line(tmp_path, edit, why):
    with pytest.raises(TileStoreError, match=why) as err:
        TileStore(_corrupt(tmp_path, edit))
    assert "\n" not in str(err.value)


def test_not_json_and_not_a_store(tmp_path):
    bad = tmp_path / "j.jzt"
    bad.mkdir()
    (bad / "tiles.json").write_text("{nope")
    with pytest.raises(TileStoreError, match="not valid JSON"):
        TileStore(bad)
    (bad / "tiles.json").write_text("[1, 2]")
    with pytest.raises(TileStoreError, match="not a jzi tile store"):
        TileStore(bad)
    with pytest.raises(TileStoreError, match="no tiles.json"):
        TileStore(tmp_path)


def _poke(store, row, value, rehash=False):
    """Write ``value`` into every column of embedding ``row``; ``rehash`` also updates the checksums so
    that only the values are wrong (a crafted store)."""
    meta = json.loads((store / "tiles.json").read_text())
    entry = meta["files"]["embeddings"]
    arr = np.memmap(store / entry["path"], dtype=np.dtype(entry["dtype"]).newbyteorder("<"), mode="r+",
                    shape=tuple(entry["shape"]))
    arr[row] = value
    arr.flush()
    if rehash:
        entry["block_sha256"] = T.block_digests(arr, entry["block_rows"])
        entry["sha256"] = T.sha256_file(store / entry["path"])
        (store / "tiles.json").write_text(json.dumps(meta))
    del arr


def test_verify_catches_edited_bytes_and_nan(tmp_path, blocks_of_16):
    good = write_store(tmp_path / "v.jzt", SMALL, DIM, "enc", _produce, dtype="float32", progress=False)
    assert verify_store(good)["ok"]
    _poke(good, 100, 1.5)  # same size, different bytes: open() accepts it (not block 0), verify() does not
    TileStore(good)
    with pytest.raises(TileStoreError, match="sha256"):
        verify_store(good)
    with pytest.raises(TileStoreError, match="non-finite"):
        write_store(tmp_path / "n.jzt", SMALL, DIM, "enc",
                    lambda r: (np.where(r[:, None] == 200, np.nan, _values(r)), None), progress=False)


def test_open_is_fast_even_for_a_deep_store(tmp_path):
    deep = replace(Region.default(), steps=5, view_px=16)  # 69905 views
    out = write_store(tmp_path / "d.jzt", deep, 4, "enc", lambda r: (np.ones((len(r), 4)), None), batch=1 << 16,
                      progress=False)
    TileStore(out)
    t0 = time.perf_counter()
    for _ in range(20):
        store = TileStore(out)
    per_open_ms = (time.perf_counter() - t0) / 20 * 1e3
    assert per_open_ms < 50, per_open_ms
    assert store.total_views == 69905 and store.embeddings.shape == (69905, 4)


def test_store_from_imagery_matches_the_encoder(bundle, geotiff, store32):  # noqa: F811
    """Rows hold the bundle's embedding of the view rendered at that row's cell."""
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.imagery import open_source

    store = TileStore(store32)
    man = load_manifest(bundle)
    assert store.encoder_id == man["encoder_id"] and store.dim == man["width"]
    backend = open_backend(bundle, man, "ort-cpu", threads=1)
    src = open_source(geotiff)
    region = store.region
    for path in ([], [6], [6, 9], [15, 0, 3]):
        lvl = len(path)
        view = src.render(region.path_center(path) if path else region.center, region.level_size_m(lvl), region.view_px)
        expected = backend.encode_views(view[None])[0]
        np.testing.assert_allclose(store.embeddings[store.row_of_path(path)], expected, rtol=1e-4, atol=1e-5)
    assert verify_store(store32)["ok"]


def test_cli_build_resumes_an_interrupted_build_then_info_verify(tmp_path, bundle, geotiff, store32, monkeypatch):  # noqa: F811
    """A build killed part-way (here: an interrupt from the imagery source) is finished by the same command."""
    import jzi.runtime.imagery as imagery

    real_open = imagery.open_source

    class Dying:
        def __init__(self, src):
            self.src, self.calls = src, 0

        def __getattr__(self, name):  # everything but render_many: the real source
            return getattr(self.src, name)

        def render_many(self, *a, **k):
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt
            return self.src.render_many(*a, **k)

    monkeypatch.setattr(imagery, "open_source", lambda spec: Dying(real_open(spec)))
    out = tmp_path / "cli.jzt"
    with pytest.raises(KeyboardInterrupt):
        T.build_store(out, bundle, str(geotiff), dtype="float32", thumb_px=8, batch=100, chunk_rows=100,
                      progress=False, backend="ort-cpu")
    assert len(list((tmp_path / "cli.jzt.partial" / "done").iterdir())) == 2
    monkeypatch.undo()
    r = _cli("build", "--engine", bundle, "--source", str(geotiff), "-o", out, "--dtype", "fp32", "--thumbs", "8",
             "--batch", "100", "--chunk-rows", "100")
    assert r.returncode == 0, r.stderr
    assert "4369 views" in r.stdout and "view/s" in r.stderr  # progress bar with a rate
    assert "200/4369" in r.stderr  # the bar starts where the last run stopped
    assert not (tmp_path / "cli.jzt.partial").exists()
    # the resumed store holds exactly what an uninterrupted build holds
    np.testing.assert_allclose(TileStore(out).embeddings, TileStore(store32).embeddings, rtol=1e-5, atol=1e-6)

    info = json.loads(_cli("info", out, "--json").stdout)
    assert info["total_views"] == 4369 and info["dtype"] == "float32" and info["files"]["pixels"]["shape"] == [4369, 8, 8, 3]
    r = _cli("verify", out, "--engine", bundle)
    assert r.returncode == 0 and "OK" in r.stdout


def test_cli_errors_are_one_line(tmp_path, bundle, geotiff, store32):  # noqa: F811
    again = _cli("build", "--engine", bundle, "--source", geotiff, "-o", store32)
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
    for args, why in [
        (("build", "--engine", tmp_path / "nobundle", "--source", geotiff, "-o", tmp_path / "x.jzt"), "bundle"),
        (("build", "--engine", bundle, "--source", tmp_path / "nothing.tif", "-o", tmp_path / "x.jzt"), "nothing.tif"),
        (("build", "--engine", bundle, "--source", geotiff, "-o", tmp_path / "x.jzt", "--backend", "tensorrt"),
         "tensorrt backend not available"),
        (("info", tmp_path / "nostore.jzt"), "not a tile store"),
        (("verify", store32, "--engine", tmp_path / "nobundle"), "bundle"),
    ]:
        r = _cli(*args)
        assert r.returncode != 0 and re_search(why, r.stderr), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x.jzt").exists() and not (tmp_path / "x.jzt.partial").exists()


def re_search(pattern, text):
    import re

    return re.search(pattern, text) is not None


@pytest.fixture
def blocks_of_16(monkeypatch):
    """Small checksum blocks so that a tiny store has many (273 rows of DIM fp16 -> blocks of 16 rows)."""
    monkeypatch.setattr(T, "BLOCK_BYTES", 16 * DIM * 2)


def test_block_checksums_are_written_and_match_the_rows(tmp_path, blocks_of_16):
    store = write_store(tmp_path / "b.jzt", SMALL, DIM, "enc", _produce, thumb_px=4, progress=False)
    meta = json.loads((store / "tiles.json").read_text())
    emb = meta["files"]["embeddings"]
    assert meta["format_version"] == 2 and emb["block_rows"] == 16 and len(emb["block_sha256"]) == 18  # ceil(273/16)
    raw = (store / "embeddings.f16").read_bytes()
    import hashlib

    assert emb["block_sha256"][-1] == hashlib.sha256(raw[16 * 17 * DIM * 2:]).hexdigest()  # the short last block
    pix = meta["files"]["pixels"]
    assert len(pix["block_sha256"]) == -(-273 // pix["block_rows"])
    np.testing.assert_array_equal(TileStore(store).read_rows([0, 17, 272]), _values([0, 17, 272]).astype(np.float16))


def test_a_damaged_block_fails_the_read_that_meets_it_naming_store_and_row(tmp_path, blocks_of_16):
    store = write_store(tmp_path / "d.jzt", SMALL, DIM, "enc", _produce, progress=False)
    _poke(store, 100, 0.25)  # flipped bytes in block 6 (rows 96..111)
    opened = TileStore(store)  # open stays cheap: block 6 is not read yet
    assert opened.read_rows([5, 200]).shape == (2, DIM)  # other blocks are fine
    with pytest.raises(TileStoreError, match=r"d.jzt: row 97 of embeddings.f16 is in a block \(rows 96..111\) "
                                             r"that does not match its checksum"):
        opened.read_rows([97])
    with pytest.raises(TileStoreError, match="row 111"):  # every later read of that block fails too
        opened.read_rows([111])


def test_non_finite_rows_are_refused_where_read_even_with_matching_checksums(tmp_path, blocks_of_16):
    store = write_store(tmp_path / "n.jzt", SMALL, DIM, "enc", _produce, progress=False)
    _poke(store, 40, np.nan, rehash=True)
    opened = TileStore(store)
    assert np.isfinite(opened.read_rows([0, 100])).all()
    with pytest.raises(TileStoreError, match="embedding row 40 holds NaN or Inf"):
        opened.read_rows([33])
    with pytest.raises(TileStoreError, match="row 40 holds NaN"):
        verify_store(store)


def test_another_stores_data_is_refused_on_open(tmp_path):
    a = write_store(tmp_path / "a.jzt", SMALL, DIM, "enc", _produce, progress=False)
    b = write_store(tmp_path / "b.jzt", SMALL, DIM, "enc", lambda r: (_values(r) + 1, None), progress=False)
    (b / "embeddings.f16").unlink()
    (b / "embeddings.f16").symlink_to(a / "embeddings.f16")
    with pytest.raises(TileStoreError, match="embeddings.f16 is a link"):
        TileStore(b)
    (b / "embeddings.f16").unlink()
    shutil.copy(a / "embeddings.f16", b / "embeddings.f16")  # a copy: same size, other data
    with pytest.raises(TileStoreError, match="row 0 of embeddings.f16 is in a block"):
        TileStore(b)


def test_old_stores_are_refused_with_an_upgrade_path(tmp_path):
    store = write_store(tmp_path / "old.jzt", SMALL, DIM, "enc", _produce, thumb_px=4, progress=False)
    meta = json.loads((store / "tiles.json").read_text())
    meta["format_version"] = 1
    for entry in meta["files"].values():
        del entry["block_rows"], entry["block_sha256"]
    (store / "tiles.json").write_text(json.dumps(meta))
    with pytest.raises(TileStoreError, match="format_version 1, this jzi reads 2 .*jzi-tiles upgrade"):
        TileStore(store)
    broken = tmp_path / "broken.jzt"
    shutil.copytree(store, broken)
    arr = np.memmap(broken / "embeddings.f16", dtype="<f2", mode="r+", shape=(273, DIM))
    arr[7] = 3.0
    arr.flush()
    del arr
    r = _cli("upgrade", broken)  # an upgrade never blesses damaged data
    assert r.returncode == 1 and "does not match its sha256" in r.stderr and len(r.stderr.splitlines()) == 1
    r = _cli("upgrade", store)
    assert r.returncode == 0 and "upgraded" in r.stdout, r.stderr
    assert verify_store(store)["ok"] and json.loads((store / "tiles.json").read_text())["format_version"] == 2
    assert "already" in _cli("upgrade", store).stdout


def test_build_on_imagery_that_misses_the_region_leaves_nothing(tmp_path, bundle, geotiff, monkeypatch):  # noqa: F811
    out = tmp_path / "far.jzt"
    r = _cli("build", "--engine", bundle, "--source", geotiff, "-o", out, "--center", "10.0,10.0")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not inside the imagery" in r.stderr and "a region that fits: --center" in r.stderr
    assert "allow_padding" not in r.stderr
    assert not out.exists() and not (tmp_path / "far.jzt.partial").exists()
    # any failure before the first batch is kept leaves nothing either (here: the encoder fails)
    from jzi.runtime.backends.onnxrt import OnnxRuntimeBackend

    def broken(self, images):
        raise RuntimeError("encoder failed")
    monkeypatch.setattr(OnnxRuntimeBackend, "encode_views", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        T.build_store(out, bundle, geotiff, backend="ort-cpu", progress=False)
    assert not (tmp_path / "far.jzt.partial").exists()
