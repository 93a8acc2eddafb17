"""The bad-input corpus: photos, checkpoints, bundles, tile stores and run files a careful user might meet.

Every case must be refused: a non-zero exit, no traceback, no answer printed, and a last stderr line
that says why (every stderr line comes from the tool itself; no warnings from libraries). The test
runs each case in-process through the CLI's ``main``; ``python tests/test_bad_inputs.py --table
OUT.md --work DIR`` runs each through the installed console script in a fresh process and writes
the table recorded in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from runtime_fixtures import built_once, make_bundle, make_checkpoint, make_geotiff, make_photos, make_store  # noqa: E402


@dataclass
class Fx:
    """The good artefacts each case damages a copy of."""
    base: Path
    bundle: Path
    store: Path
    geotiff: Path
    checkpoint: Path
    photo: Path


@dataclass
class Case:
    kind: str
    name: str
    make: Callable[[Fx, Path], list]  # (good artefacts, a fresh folder) -> argv (first item: the command)
    why: str  # regex the last stderr line must match


CASES: list[Case] = []


def case(kind, name, why):
    def add(make):
        CASES.append(Case(kind, name, make, why))
        return make
    return add


def run_photo(fx, path, *extra):
    return ["jzi-run", "--engine", fx.bundle, "--tiles", fx.store, path, "--threads", "1", *extra]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, (bytes, bytearray)) else path.write_text)(data)
    return path


def _encode(ext, img) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


# ---- photos ------------------------------------------------------------------------------------------
def _photo_case(name, why, data_fn, filename="bad.jpg"):
    case("photo", name, why)(lambda fx, d: run_photo(fx, _write(d / filename, data_fn(fx))))


def _gif(w, h):
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x44\x01\x00\x3b")


def _patched(ext, img, find, at, packed):
    data = bytearray(_encode(ext, img))
    i = bytes(data).index(find) + at
    data[i:i + len(packed)] = packed
    return bytes(data)


_Z = np.zeros((48, 80, 3), np.uint8)
_photo_case("empty file", "empty file", lambda fx: b"")
_photo_case("text named .jpg", "not a readable image", lambda fx: b"hello, I am not a photo")
_photo_case("random bytes", "not a readable image", lambda fx: os.urandom(4096))
_photo_case("JPEG cut after 10 bytes", "JPEG|readable", lambda fx: fx.photo.read_bytes()[:10])
_photo_case("JPEG cut in half", "readable|JPEG", lambda fx: fx.photo.read_bytes()[:len(fx.photo.read_bytes()) // 3])
_photo_case("JPEG without a frame header", "JPEG without a frame header", lambda fx: b"\xff\xd8\xff\xe0\x00\x04ab")
_photo_case("PNG claiming 100000x100000", "over the cap",
            lambda fx: _patched(".png", _Z, b"IHDR", 4, struct.pack(">II", 100000, 100000)), "bomb.png")
_photo_case("PNG IHDR missing", "PNG", lambda fx: b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "x.png")
_photo_case("PNG 0x0", "empty size", lambda fx: _patched(".png", _Z, b"IHDR", 4, struct.pack(">II", 0, 0)), "z.png")
_photo_case("PNG with a corrupt body", "not a readable image",
            lambda fx: _patched(".png", _Z, b"IDAT", 4, b"\x00" * 8), "c.png")
_photo_case("PNG cut short, zeros after", "PNG chunk of .* bytes at byte 33 runs past the end",
            lambda fx: _encode(".png", _Z)[:40] + b"\x00" * 60, "cut.png")
_photo_case("GIF 20000x20000 (bomb)", "20000x20000 pixels is over the cap", lambda fx: _gif(20000, 20000), "g.gif")
_photo_case("GIF 30000x30000 named holiday.jpg", "30000x30000 pixels is over the cap", lambda fx: _gif(30000, 30000),
            "holiday.jpg")
_photo_case("GIF with a small screen and a huge frame", "over the cap",
            lambda fx: _gif(20000, 20000)[:6] + struct.pack("<HH", 8, 8) + _gif(20000, 20000)[10:], "f.gif")
_photo_case("GIF without an image", "GIF", lambda fx: b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0, 0, 0) + b"\x3b")
_photo_case("JPEG 2000 claiming 30000x30000", "over the cap",
            lambda fx: _patched(".jp2", _Z, b"ihdr", 4, struct.pack(">II", 30000, 30000)), "b.jp2")
_photo_case("JPEG 2000 codestream claiming 40000x40000", "over the cap",
            lambda fx: b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 40000, 40000, 0, 0) + b"\0" * 40)
_photo_case("JPEG 2000 truncated", "JPEG 2000|JP2", lambda fx: _encode(".jp2", _Z)[:20], "t.jp2")
_photo_case("WebP claiming 16384x16384", "over the cap",
            lambda fx: b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (16383).to_bytes(3, "little") * 2 + b"\0" * 8)
_photo_case("TIFF claiming 60000x60000", "over the cap",
            lambda fx: b"II*\x00\x08\x00\x00\x00\x02\x00" + struct.pack("<HHII", 256, 4, 1, 60000)
            + struct.pack("<HHII", 257, 4, 1, 60000) + b"\0" * 8, "t.tif")
_photo_case("TIFF without size tags", "TIFF without width/height", lambda fx: b"II*\x00\x08\x00\x00\x00\x00\x00" + b"\0" * 8)
_photo_case("BigTIFF truncated", "TIFF", lambda fx: b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8)
_photo_case("BMP claiming 2^31 wide", "over the cap",
            lambda fx: b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 2 ** 31 - 1, 20000) + b"\0" * 30, "b.bmp")
_photo_case("PPM claiming 30000x30000", "over the cap", lambda fx: b"P6\n30000 30000\n255\n" + b"\0" * 64, "b.ppm")
_photo_case("PPM with a bad header", "PNM", lambda fx: b"P6\nabc def\n255\n", "h.ppm")
_photo_case("PAM claiming 30000x30000", "over the cap",
            lambda fx: b"P7\nWIDTH 30000\nHEIGHT 30000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n", "b.pam")
_photo_case("HDR claiming 30000x30000", "over the cap",
            lambda fx: b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\0" * 16, "b.hdr")
_photo_case("Sun raster claiming 30000x30000", "over the cap",
            lambda fx: b"\x59\xa6\x6a\x95" + struct.pack(">IIIIIII", 30000, 30000, 24, 0, 1, 0, 0), "b.ras")
_photo_case("PFM claiming 30000x30000", "over the cap", lambda fx: b"PF\n30000 30000\n-1\n" + b"\0" * 16, "b.pfm")
_photo_case("OpenEXR (size not readable first)", "not a readable image", lambda fx: b"\x76\x2f\x31\x01" + b"\0" * 64,
            "x.exr")
_photo_case("AVIF with a broken box", "AVIF", lambda fx: b"\x00\x00\x00\x18ftypavif" + b"\x00" * 8 + b"\xff" * 16)
case("photo", "an empty folder named like a photo", "no images in this folder")(
    lambda fx, d: run_photo(fx, (d / "photo.jpg").mkdir() or d / "photo.jpg"))
case("photo", "a missing file", "cannot read")(lambda fx, d: run_photo(fx, d / "nothere.jpg"))
case("photo", "a folder without images", "no images in this folder")(
    lambda fx, d: run_photo(fx, _write(d / "f" / "notes.txt", "hi").parent))
case("photo", "a file larger than any image under the cap", "larger than any image")(
    lambda fx, d: run_photo(fx, _sparse(d / "huge.jpg", 900_000_000), "--max-pixels", "100000000"))
case("photo", "a photo over --max-pixels", "over the cap")(
    lambda fx, d: run_photo(fx, fx.photo, "--max-pixels", "100"))
case("photo", "a symlink loop", "cannot read")(lambda fx, d: run_photo(fx, _loop(d / "loop.jpg")))


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


# ---- photo lists and run files -----------------------------------------------------------------------
case("run file", "CSV with a bad latitude", "bad latitude/longitude")(
    lambda fx, d: run_photo(fx, _write(d / "q.csv", f"path,latitude,longitude\n{fx.photo},north,1\n")))
case("run file", "CSV latitude out of range", "bad latitude/longitude")(
    lambda fx, d: run_photo(fx, _write(d / "q.csv", f"path,latitude,longitude\n{fx.photo},91,1\n")))
case("run file", "CSV without a path column", "needs a 'path' or 'image_id' column")(
    lambda fx, d: run_photo(fx, _write(d / "q.csv", "name,x\na,1\n")))
case("run file", "CSV with an empty path", "empty path")(
    lambda fx, d: run_photo(fx, _write(d / "q.csv", "path\n\"\"\n")))
case("run file", "CSV that is not UTF-8", "cannot read the CSV")(
    lambda fx, d: run_photo(fx, _write(d / "q.csv", b"path\n\xff\xfe\xfa.jpg\n")))
case("run file", "CSV that does not exist", "no such file")(lambda fx, d: run_photo(fx, d / "none.csv"))
case("run file", "--resume file that is not a jzi-run output", "not a jzi-run --json line")(
    lambda fx, d: run_photo(fx, fx.photo, "--json", "--resume", _write(d / "r.jsonl", "hello\nworld\n")))
case("run file", "--resume file that is missing", "cannot read the previous output")(
    lambda fx, d: run_photo(fx, fx.photo, "--resume", d / "none.jsonl"))
case("run file", "--resume GeoJSON cut short", "not a complete jzi-run GeoJSON")(
    lambda fx, d: run_photo(fx, fx.photo, "--resume", _write(d / "r.geojson", '{"type": "FeatureCollection", "fe')))
case("run file", "--beams 0", "--beams")(lambda fx, d: run_photo(fx, fx.photo, "--beams", "0"))
case("run file", "--beams 17", "beams must be between 1 and 16")(lambda fx, d: run_photo(fx, fx.photo, "--beams", "17"))
case("run file", "--max-pixels 0", "--max-pixels")(lambda fx, d: run_photo(fx, fx.photo, "--max-pixels", "0"))


# ---- checkpoints -------------------------------------------------------------------------------------
def export(path, d):
    return ["jzi-export", path, "-o", d / "bundle_out"]


def _ckpt_case(name, why, make_file):
    case("checkpoint", name, why)(lambda fx, d: export(make_file(fx, d), d))


class _Code:
    def __reduce__(self):
        return (print, ("the pickled code ran",))


def _torch_save(obj, path, **kw):
    import torch

    torch.save(obj, path, **kw)
    return path


def _state(fx):
    import torch

    return torch.load(fx.checkpoint, weights_only=True)


_ckpt_case("missing file", "no such file", lambda fx, d: d / "none.pt")
_ckpt_case("a directory", "is a directory", lambda fx, d: d)
_ckpt_case("empty file", "not a checkpoint", lambda fx, d: _write(d / "e.pt", b""))
_ckpt_case("text file", "not a checkpoint", lambda fx, d: _write(d / "t.pt", "not a checkpoint"))
_ckpt_case("random bytes", "not a checkpoint", lambda fx, d: _write(d / "r.pt", os.urandom(2048)))
_ckpt_case("plain pickle holding code", "refused, the file holds pickled code",
           lambda fx, d: _write(d / "p.pt", pickle.dumps({"model_state_dict": _Code()})))
_ckpt_case("torch.save holding code", "refused, the file holds pickled code",
           lambda fx, d: _torch_save({"model_state_dict": {}, "x": _Code()}, d / "z.pt"))
_ckpt_case("legacy torch file holding code", "refused, the file holds pickled code",
           lambda fx, d: _torch_save({"x": _Code()}, d / "l.pt", _use_new_zipfile_serialization=False))
_ckpt_case("plain pickle without code", "not a checkpoint", lambda fx, d: _write(d / "n.pt", pickle.dumps([1, 2, 3])))
_ckpt_case("a list, not a dict", "not a checkpoint", lambda fx, d: _torch_save([1, 2], d / "l.pt"))
_ckpt_case("a dict without model_state_dict", "model_state_dict", lambda fx, d: _torch_save({"w": [1]}, d / "w.pt"))
_ckpt_case("model_state_dict holding a string", "not a mapping of names to tensors",
           lambda fx, d: _torch_save({"model_state_dict": {"a": "b"}}, d / "s.pt"))
_ckpt_case("decoder weights missing", "key|missing|preset",
           lambda fx, d: _torch_save({"model_state_dict": {k: v for k, v in _state(fx)["model_state_dict"].items()
                                                           if not k.startswith("decoder.")}}, d / "m.pt"))
_ckpt_case("a weight of the wrong shape", "shape|preset",
           lambda fx, d: _torch_save({"model_state_dict": {**_state(fx)["model_state_dict"],
                                                           "decoder.output_head.weight": __import__("torch").zeros(3, 3)}},
                                     d / "w.pt"))
_ckpt_case("zip checkpoint cut in half", "not a checkpoint",
           lambda fx, d: _write(d / "h.pt", fx.checkpoint.read_bytes()[: fx.checkpoint.stat().st_size // 2]))
_ckpt_case("zip with a garbage data.pkl", "not a checkpoint", lambda fx, d: _zip_garbage(d / "g.pt"))


def _zip_garbage(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02garbage")
        z.writestr("archive/version", "3\n")
    return path


# ---- bundles ------------------------------------------------------------------------------------------
def _edited_copy(src: Path, dst: Path, document: str, edit=None, files=None) -> Path:
    """A copy of a bundle or store with ``files(dir, doc)`` and ``edit(doc)`` applied to it and its JSON document."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / document).read_text())
    if files:
        files(dst, doc)
    if edit:
        edit(doc)
    (dst / document).write_text(json.dumps(doc))
    return dst


def _rehash(dst, man):
    from jzi.runtime.bundle import sha256_file

    for e in man["files"].values():
        e["sha256"] = sha256_file(dst / e["path"])


def _bundle_case(name, why, edit=None, files=None, tiles=False):
    def make(fx, d):
        b = _edited_copy(fx.bundle, d / "bundle", "manifest.json", edit, files)
        if tiles:
            return ["jzi-tiles", "build", "--engine", b, "--source", fx.geotiff, "-o", d / "o.jzt"]
        return ["jzi-run", "--engine", b, "--tiles", fx.store, fx.photo, "--threads", "1"]
    case("bundle", name + (" (jzi-tiles build)" if tiles else ""), why)(make)


def _set(path, value):
    def edit(man):
        *parents, last = path.split(".")
        node = man
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


for tiles in (False, True):
    _bundle_case("decoder: {}", "decoder.layers is missing", _set("decoder", {}), tiles=tiles)
    _bundle_case('decoder: "x"', "decoder must be an object", _set("decoder", "x"), tiles=tiles)
    _bundle_case("tensors: {}", "tensors.view_encoder is missing", _set("tensors", {}), tiles=tiles)
    _bundle_case("decoder.cache_len 4", "decoder.cache_len is 4", _set("decoder.cache_len", 4), tiles=tiles)
    _bundle_case("decoder.layers 3", "names disagree", _set("decoder.layers", 3), tiles=tiles)
    _bundle_case("n_actions 8", "n_actions is 8", _set("n_actions", 8), tiles=tiles)
_bundle_case("decoder.heads 0", "decoder.heads must be", _set("decoder.heads", 0))
_bundle_case("width as a string", "width must be an integer", _set("width", "96"))
_bundle_case("street_size [64, 64]", "street_size is", _set("street_size", [64, 64]))
_bundle_case("precision fp8", "precision must be one of", _set("precision", "fp8"))
_bundle_case("region.size_m NaN", "region.size_m must be a finite number", _set("region.size_m", float("nan")))
_bundle_case("region.center_lon 200", "region.center_lon must be", _set("region.center_lon", 200.0))
_bundle_case("encoder_id empty", "encoder_id must be a non-empty string", _set("encoder_id", ""))
_bundle_case("sha256 not hex", "files.decoder.sha256 must be 64", _set("files.decoder.sha256", "zz"))
_bundle_case("a tensor dtype float64", r"dtype must be one of", _set("tensors.decoder.inputs.0.dtype", "float64"))
_bundle_case("format_version 7", "format_version 7", _set("format_version", 7))
_bundle_case("format is another tool's", "not a jzi bundle manifest", _set("format", "onnx-bundle"))
_bundle_case("file entry outside the bundle", "points outside the bundle", _set("files.decoder.path", "../../etc/passwd"))
_bundle_case("graph file missing", "decoder.onnx is missing", files=lambda d, m: (d / "decoder.onnx").unlink())
_bundle_case("flipped byte in a graph", "does not match its sha256",
             files=lambda d, m: _flip(d / "decoder.onnx", 5000))
_bundle_case("view encoder in the street encoder's place (checksums updated)", "swapped or edited graph",
             files=lambda d, m: (shutil.copy(d / "view_encoder.onnx", d / "street_encoder.onnx"), _rehash(d, m)))
_bundle_case("decoder in the street encoder's place (checksums updated)", "swapped or edited graph",
             files=lambda d, m: (shutil.copy(d / "decoder.onnx", d / "street_encoder.onnx"), _rehash(d, m)))
_bundle_case("truncated graph (checksums updated)", "ONNX Runtime cannot load it",
             files=lambda d, m: (_truncate(d / "decoder.onnx", 1000), _rehash(d, m)))
case("bundle", "manifest not JSON", "not valid JSON")(
    lambda fx, d: ["jzi-run", "--engine", _write(d / "b" / "manifest.json", "{oops").parent, "--tiles", fx.store, fx.photo])
case("bundle", "manifest is a list", "not a jzi bundle manifest")(
    lambda fx, d: ["jzi-run", "--engine", _write(d / "b" / "manifest.json", "[1]").parent, "--tiles", fx.store, fx.photo])
case("bundle", "does not exist", "does not exist")(
    lambda fx, d: ["jzi-run", "--engine", d / "nothing", "--tiles", fx.store, fx.photo])
case("bundle", "a directory without manifest.json", "no manifest.json")(
    lambda fx, d: ["jzi-run", "--engine", d, "--tiles", fx.store, fx.photo])


def _flip(path: Path, at: int):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int):
    path.write_bytes(path.read_bytes()[:size])


# ---- tile stores ---------------------------------------------------------------------------------------
def _store_case(name, why, edit=None, files=None, cmd="run"):
    def make(fx, d):
        s = _edited_copy(fx.store, d / "store.jzt", "tiles.json", edit, files)
        if cmd == "verify":
            return ["jzi-tiles", "verify", s]
        return ["jzi-run", "--engine", fx.bundle, "--tiles", s, fx.photo, "--threads", "1"]
    case("store", name + (" (jzi-tiles verify)" if cmd == "verify" else ""), why)(make)


def _emb(dst, meta):
    e = meta["files"]["embeddings"]
    return np.memmap(dst / e["path"], dtype=np.dtype(e["dtype"]).newbyteorder("<"), mode="r+", shape=tuple(e["shape"]))


def _damage_every_block(dst, meta, value, rehash=False):
    from jzi.runtime.tiles import block_digests

    e = meta["files"]["embeddings"]
    arr = _emb(dst, meta)
    arr[:: e["block_rows"], 0] = value
    arr.flush()
    if rehash:
        e["block_sha256"] = block_digests(arr, e["block_rows"])
    del arr


def _damage_level(dst, meta, level, value, rehash=False):
    """Every row of one level: whatever path a query takes, it reads a damaged row there."""
    from jzi.runtime.geometry import Region
    from jzi.runtime.tiles import block_digests

    region = Region.from_dict(meta["region"])
    arr = _emb(dst, meta)
    lo = region.level_offset(level)
    arr[lo:lo + region.n_views(level), 3] = value
    arr.flush()
    if rehash:
        e = meta["files"]["embeddings"]
        e["block_sha256"] = block_digests(arr, e["block_rows"])
    del arr


for cmd in ("run", "verify"):
    _store_case("flipped bytes in every block", "does not match its checksum|sha256",
                files=lambda d, m: _damage_every_block(d, m, 7.0), cmd=cmd)
    _store_case("NaN rows, checksums updated", "holds NaN or Inf",
                files=lambda d, m: _damage_every_block(d, m, np.nan, rehash=True), cmd=cmd)
    _store_case("Inf rows, checksums updated", "holds NaN or Inf",
                files=lambda d, m: _damage_every_block(d, m, np.inf, rehash=True), cmd=cmd)
_store_case("flipped bytes on every level-3 row (met by the query)", "does not match its checksum",
            files=lambda d, m: _damage_level(d, m, 3, 0.5))
_store_case("NaN on every level-2 row, checksums updated (met by the query)", "holds NaN or Inf",
            files=lambda d, m: _damage_level(d, m, 2, np.nan, rehash=True))
_store_case("dtype edited to float16", "float16 embeddings must be in embeddings.f16",
            _set("files.embeddings.dtype", "float16"))
_store_case("dtype edited to float64", "dtype must be one of", _set("files.embeddings.dtype", "float64"))
_store_case("bytes field wrong", "files.embeddings.bytes is 5", _set("files.embeddings.bytes", 5))
_store_case("shape edited", "shape is", _set("files.embeddings.shape", [4369, 48]))
_store_case("region.size_m negative", "region.size_m must be a finite number", _set("region.size_m", -5))
_store_case("region.center_lat NaN", "region.center_lat must be a finite number", _set("region.center_lat", float("nan")))
_store_case("steps edited", "disagree with grid/steps/view_px", _set("steps", 5))
_store_case("dim negative", "dim must be an integer", _set("dim", -3))
_store_case("levels table edited", "levels table", lambda m: m["levels"][1].update(offset=3))
_store_case("format_version 1 (no block checksums)", "jzi-tiles upgrade", _set("format_version", 1))
_store_case("format_version 99", "format_version 99", _set("format_version", 99))
_store_case("encoder_id missing", "encoder_id is missing", lambda m: m.pop("encoder_id"))
_store_case("built by another encoder", "rebuild it with jzi-tiles build", _set("encoder_id", "someone-else"))
_store_case("unknown file role", "unknown file role",
            lambda m: m["files"].update(extra=dict(m["files"]["embeddings"])))
_store_case("file path outside the store", "plain file name", _set("files.embeddings.path", "../x.f32"))
_store_case("block_rows 0", "block_rows must be an integer", _set("files.embeddings.block_rows", 0))
_store_case("a block digest missing", "block_sha256 holds", lambda m: m["files"]["embeddings"]["block_sha256"].pop())
_store_case("a block digest not hex", "block_sha256", _set("files.embeddings.block_sha256.0", "xyz"))
_store_case("embeddings truncated", "truncated or corrupt", files=lambda d, m: _truncate(d / "embeddings.f32", 1000))
_store_case("embeddings with bytes appended", "truncated or corrupt",
            files=lambda d, m: open(d / "embeddings.f32", "ab").write(b"\0" * 64))
_store_case("embeddings missing", "embeddings.f32 is missing", files=lambda d, m: (d / "embeddings.f32").unlink())
_store_case("embeddings a symlink to another store's data", "is a link",
            files=lambda d, m: _relink(d / "embeddings.f32", _other_store(d)))
_store_case("embeddings a copy of another store's data", "row 0 of embeddings.f32 is in a block",
            files=lambda d, m: shutil.copy(_other_store(d), d / "embeddings.f32"))
case("store", "index not JSON", "not valid JSON")(
    lambda fx, d: ["jzi-run", "--engine", fx.bundle, "--tiles", _write(d / "s.jzt" / "tiles.json", "{nope").parent,
                   fx.photo])
_store_case("index with NaN tokens", "must be a finite number", _set("region.center_lon", float("nan")))
case("store", "not a directory", "not a tile store")(
    lambda fx, d: ["jzi-run", "--engine", fx.bundle, "--tiles", d / "none.jzt", fx.photo])
case("store", "a directory without tiles.json", "no tiles.json")(
    lambda fx, d: ["jzi-run", "--engine", fx.bundle, "--tiles", d, fx.photo])
case("store", "an unfinished build", "an unfinished build")(
    lambda fx, d: ["jzi-run", "--engine", fx.bundle, "--tiles", (d / "x.jzt.partial").mkdir() or d / "x.jzt.partial",
                   fx.photo])


def _other_store(store_dir: Path) -> Path:
    """Embeddings of the same shape and dtype but other values (another store's data), beside the store."""
    src = store_dir / "embeddings.f32"
    other = store_dir.parent / "other.f32"
    arr = np.fromfile(src, dtype="<f4")
    (arr + 1.0).astype("<f4").tofile(other)
    return other


def _relink(path: Path, target: Path):
    path.unlink()
    path.symlink_to(target)


# ---- running a case -----------------------------------------------------------------------------------
_MAINS = {"jzi-run": "jzi.runtime.run_cli", "jzi-tiles": "jzi.runtime.tiles_cli", "jzi-export": "jzi.export.cli"}


def verdict(rc: int, out: str, err: str, why: str) -> str:
    """'refused' when the case was handled as it must be, else what went wrong."""
    lines = err.strip().splitlines()
    if "Traceback" in err:
        return "TRACEBACK"
    if rc == 0:
        return "ACCEPTED (exit 0)"
    if re.search(r"^\S+  -?\d+\.\d+, -?\d+\.\d+|\"latitude\"", out, re.MULTILINE):
        return "ANSWERED"
    if not lines or not re.search(why, lines[-1]):
        return "UNCLEAR MESSAGE"
    prog = "jzi-run" if "jzi-run" in lines[-1] else lines[-1].split(":")[0]
    if any(not line.startswith(prog + ":") for line in lines):
        return "EXTRA OUTPUT"
    return "refused"


def run_in_process(argv) -> tuple[int, str, str]:
    import importlib

    main = importlib.import_module(_MAINS[argv[0]]).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv[1:]])
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException:  # a traceback the user would see
            import traceback

            err.write(traceback.format_exc())
            rc = 1
    return rc, out.getvalue(), err.getvalue()


def make_fixtures(base: Path) -> Fx:
    import cv2

    base.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle(base)
    photo = base / "good_photo.jpg"
    with built_once(photo):
        if not photo.exists():
            cv2.imwrite(str(photo), cv2.cvtColor(make_photos(base, 1, seed=9)[0], cv2.COLOR_RGB2BGR))
    return Fx(base, bundle, make_store(base, bundle), make_geotiff(base), make_checkpoint(base / "tiny.pt"), photo)


@pytest.fixture(scope="module")
def fx(rt_base):
    return make_fixtures(rt_base)


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 100 and kinds >= {"photo", "checkpoint", "bundle", "store"}


def test_good_inputs_pass_the_same_checks(fx, tmp_path):
    """The verdict is not trivially 'refused': the good artefacts are answered with exit 0."""
    rc, out, err = run_in_process(run_photo(fx, fx.photo))
    assert rc == 0 and verdict(rc, out, err, ".") == "ACCEPTED (exit 0)", err


@pytest.mark.parametrize("c", CASES, ids=[f"{c.kind}: {c.name}" for c in CASES])
def test_every_bad_input_is_refused_with_one_line(c, fx, tmp_path):
    argv = c.make(fx, tmp_path)
    rc, out, err = run_in_process(argv)
    assert verdict(rc, out, err, c.why) == "refused", f"exit {rc}\nstdout: {out[-500:]}\nstderr: {err[-2000:]}"
    assert not (tmp_path / "bundle_out").exists() and not (tmp_path / "o.jzt").exists()


def _table(out_md: Path, work: Path) -> None:
    """Every case, run as the test runs it; a markdown table of the verdicts."""
    import tempfile

    fixtures = make_fixtures(work)
    rows, bad = [], 0
    for n, c in enumerate(CASES, start=1):
        with tempfile.TemporaryDirectory(dir=work) as d:
            rc, out, err = run_in_process(c.make(fixtures, Path(d)))
            v = verdict(rc, out, err, c.why)
            bad += v != "refused"
            last = (err.strip().splitlines() or [""])[-1].replace(d, "$TMP").replace(str(work), "$WORK")
            rows.append(f"| {n} | {c.kind} | {c.name} | {rc} | {v} | `{last[:150].replace('|', '/')}` |")
            print(rows[-1], flush=True)
    head = ["| # | kind | case | exit | verdict | the one line (stderr) |", "|---|---|---|---|---|---|"]
    out_md.write_text("\n".join(head + rows) + f"\n\n{len(CASES)} cases, {len(CASES) - bad} refused as required, "
                      f"{bad} not.\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    a = ap.parse_args()
    _table(a.table, a.work)
