"""The tile store: every satellite view of a region, encoded once, memory-mapped at query time.

A store is a directory ``REGION.jzt``::

    tiles.json        what the arrays hold (below); the only file a reader parses
    embeddings.f16    raw little-endian float16 [total_views, D]   (embeddings.f32 when built in fp32)
    pixels.u8         optional raw uint8 [total_views, P, P, 3] RGB thumbnails for visualisation

Row ``Region.level_offset(level) + Region.path_index(path)`` holds the view reached by ``path``
(levels 0 .. steps-1), so the 16 children of a cell are 16 contiguous rows. Raw arrays plus JSON
mean a C/C++ reader needs nothing else: ``tiles.json`` gives dtype, byte order, shape and offset 0.

``tiles.json``: format ("jzi-tiles"), format_version (2), created, region (a Region dict), grid,
steps, view_px, dim, levels [{level, offset, count, size_m, meters_per_pixel}], files {role:
{path, dtype, byte_order, shape, bytes, sha256, block_rows, block_sha256}}, encoder_id (the
bundle's; a runtime refuses a store made by other encoder weights), encoder_precision, source
(what the views were rendered from).

Checksums per block of rows (format_version 2): ``block_sha256[i]`` is the sha256 of the raw bytes
of rows ``i * block_rows`` .. ``min((i + 1) * block_rows, shape[0]) - 1`` of that file (the last
block may be shorter), so ``len(block_sha256) == ceil(shape[0] / block_rows)``. ``sha256`` is the
hash of the whole file. Writers pick ``block_rows`` (about 1 MiB per block, ``block_digests``
computes the list); readers take it from the index.

Reading is checked without hashing the store at open:

- open: the index is validated field by field (messages name the field), every array must be a
  regular file inside the store with exactly the size its dtype and shape need, and block 0 of the
  embeddings is verified (a symlink to, or a copy of, another store's data fails here);
- every read (``read_rows``, ``view_pixels``): each block a row falls in is verified the first time
  it is touched (its sha256, and for embeddings that every value is finite); a block that fails
  raises one ``TileStoreError`` line naming the store and the row, and no answer is given;
- ``verify_store`` (``jzi-tiles verify``) checks every block and the whole-file sha256s.

Stores of format_version 1 (no block checksums) are refused with a pointer to ``jzi-tiles
upgrade STORE``, which checks their whole-file sha256s and finiteness, then adds the block
checksums (``upgrade_store``). A store is untrusted input throughout. ``TileStore`` may be shared
by threads.

Building is chunked and idempotent, so any number of workers (one process, ``--shard i/N``
processes, Ray actors) can fill one store and any of them can die and be rerun::

    REGION.jzt.partial/
        build.json        the StoreLayout (region, dim, dtype, thumbs, chunk_rows, encoder): every worker's plan
        embeddings.f16    preallocated at full size (sparse), rows written in place by view id
        pixels.u8         likewise, when thumbnails are built
        done/00000012     an empty marker per chunk, created only after the chunk's rows are flushed

A worker skips chunks already marked; the merge (``finalize_store``, ``jzi-tiles merge``) checks
that every chunk is marked, writes ``tiles.json`` with the checksums and renames the directory
into place. Rewriting a chunk writes the same bytes, so reruns and retries are harmless.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import schema as S
from .bundle import sha256_file
from .geometry import Region

FORMAT = "jzi-tiles"
FORMAT_VERSION = 2
BLOCK_BYTES = 1 << 20  # writers' target block size: the first read of a block hashes about 1 MiB
INDEX = "tiles.json"
BUILD = "build.json"  # the layout of a build in progress, shared by its workers
DONE_DIR = "done"  # one empty file per finished chunk
DTYPES = {"float16": "embeddings.f16", "float32": "embeddings.f32"}
PIXELS = "pixels.u8"
_HEX = S.string(hex_len=64)
_FILE_V1 = {"path": S.string(), "dtype": S.string(("float16", "float32", "uint8")),
            "shape": S.list_of(S.integer(0, 1 << 40), max_len=4), "bytes": S.integer(0, 1 << 50), "sha256": _HEX}
_FILE_V2 = {**_FILE_V1, "block_rows": S.integer(1, 1 << 40), "block_sha256": S.list_of(_HEX)}
_TOP = {"region": S.REGION, "grid": S.integer(2, 16), "steps": S.integer(1, 12), "view_px": S.integer(1, 1 << 14),
        "dim": S.integer(1, 1 << 16), "levels": S.list_of(S.any_value), "encoder_id": S.string()}
_OPTIONAL = {"byte_order": S.string(("little",))}
INDEX_SCHEMAS = {1: S.obj({**_TOP, "files": S.mapping(S.obj(_FILE_V1, _OPTIONAL))}),
                 2: S.obj({**_TOP, "files": S.mapping(S.obj(_FILE_V2, _OPTIONAL))})}


class TileStoreError(ValueError):
    """A tile store that cannot be used, with one line saying why."""


def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def _atomic_json(path: Path, obj) -> None:
    # a temporary name of this process's own: shard processes may write the same file at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def block_rows_for(row_bytes: int) -> int:
    """Rows per checksum block for rows of ``row_bytes`` bytes (about ``BLOCK_BYTES`` per block)."""
    return max(1, BLOCK_BYTES // max(1, int(row_bytes)))


def block_digests(array, block_rows: int) -> list[str]:
    """sha256 hex digests of consecutive blocks of ``block_rows`` rows of ``array`` (an array or memmap;
    its raw C-order bytes as stored on disk); the last block may be shorter. ``files.<role>.block_sha256``."""
    arr = np.asarray(array)
    return [hashlib.sha256(np.ascontiguousarray(arr[i:i + block_rows])).hexdigest()
            for i in range(0, len(arr), block_rows)]


def levels_table(region: Region) -> list[dict]:
    return [{"level": lvl, "offset": region.level_offset(lvl), "count": region.n_views(lvl),
             "size_m": float(region.level_size_m(lvl)), "meters_per_pixel": float(region.meters_per_pixel(lvl))}
            for lvl in range(region.steps)]


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class TileStore:
    """An opened store: ``embeddings`` [total_views, D] and optional ``pixels`` as read-only memmaps.

    Read through ``read_rows`` / ``view_pixels``: they verify each block of rows the first time it is
    read (see the module docstring). The raw memmaps are unchecked.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.meta = _read_index(self.path)
        m = self.meta
        self.region = Region.from_dict(m["region"])
        self.dim = int(m["dim"])
        self.encoder_id = m["encoder_id"]
        emb = m["files"]["embeddings"]
        self.dtype = emb["dtype"]
        self.embeddings = _map(self.path, emb, self.dtype)
        pix = m["files"].get("pixels")
        self.pixels = _map(self.path, pix, "uint8") if pix else None
        self._lock = threading.Lock()
        self._checked = {role: np.zeros(len(e["block_sha256"]), bool) for role, e in m["files"].items()}
        self._check_blocks("embeddings", np.zeros(1, np.int64))  # same store: its first block is its own

    def read_rows(self, rows) -> np.ndarray:
        """Embedding rows ``rows`` as float32 [n, D], each block verified the first time it is read."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.total_views):
            bad = int(rows.min()) if rows.min() < 0 else int(rows.max())
            raise TileStoreError(f"{self.path}: row {bad} is outside the store's {self.total_views} rows")
        self._check_blocks("embeddings", rows)
        return np.asarray(self.embeddings[rows], dtype=np.float32)

    def _check_blocks(self, role: str, rows: np.ndarray) -> None:
        checked = self._checked[role]
        blocks = rows // self.meta["files"][role]["block_rows"]
        for block in np.unique(blocks[~checked[blocks]]):
            self._verify_block(role, int(block), int(rows[blocks == block][0]))
            with self._lock:
                checked[block] = True

    def _verify_block(self, role: str, block: int, row: int) -> None:
        entry = self.meta["files"][role]
        arr = self.embeddings if role == "embeddings" else self.pixels
        start = block * entry["block_rows"]
        data = arr[start:start + entry["block_rows"]]
        if hashlib.sha256(np.ascontiguousarray(data)).hexdigest() != entry["block_sha256"][block]:
            raise TileStoreError(f"{self.path}: row {row} of {entry['path']} is in a block (rows {start}.."
                                 f"{start + len(data) - 1}) that does not match its checksum in {INDEX} "
                                 "(corrupt or edited); rebuild the store")
        if role == "embeddings":
            finite = np.isfinite(data).all(axis=1)
            if not finite.all():
                bad = start + int(np.argmin(finite))
                raise TileStoreError(f"{self.path}: embedding row {bad} holds NaN or Inf; rebuild the store")

    def verify_all(self) -> None:
        """Verify every block of every file (what ``jzi-tiles verify`` does besides whole-file hashes)."""
        for role, entry in self.meta["files"].items():
            self._check_blocks(role, np.arange(0, entry["shape"][0], entry["block_rows"], dtype=np.int64))

    @property
    def total_views(self) -> int:
        return self.region.total_views

    def row(self, level: int, index: int) -> int:
        """Row of the view with ``index`` within ``level``."""
        return self.region.level_offset(level) + int(index)

    def row_of_path(self, path) -> int:
        path = list(path)
        return self.row(len(path), int(self.region.path_index(path)) if path else 0)

    def view_pixels(self, path) -> np.ndarray | None:
        """The RGB thumbnail of the view reached by ``path`` (a copy), or None without a pixel pyramid."""
        if self.pixels is None:
            return None
        row = self.row_of_path(path)
        self._check_blocks("pixels", np.array([row], np.int64))
        return np.array(self.pixels[row])

    def summary(self) -> dict:
        m = self.meta
        files = {role: {k: e[k] for k in ("path", "dtype", "shape", "bytes")} for role, e in m["files"].items()}
        return {"path": str(self.path), "region": m["region"], "grid": m["grid"], "steps": m["steps"],
                "view_px": m["view_px"], "dim": self.dim, "total_views": self.total_views,
                "final_cell_m": self.region.cell_size_m, "dtype": self.dtype, "encoder_id": self.encoder_id,
                "encoder_precision": m.get("encoder_precision"), "source": m.get("source"),
                "source_meters_per_pixel": m.get("source_meters_per_pixel"),
                "created": m.get("created"), "levels": m["levels"], "files": files}


def open_store(path) -> TileStore:
    return TileStore(path)


def _read_index(root: Path, versions=(FORMAT_VERSION,)) -> dict:
    if not root.is_dir():
        raise TileStoreError(f"{root}: not a tile store directory")
    index = root / INDEX
    if not index.is_file():
        hint = " (an unfinished build: run jzi-tiles build again to resume it)" if root.name.endswith(".partial") else ""
        raise TileStoreError(f"{root}: no {INDEX}; is this a jzi tile store (made by jzi-tiles build)?{hint}")
    m = S.read_json_document(index, FORMAT, {v: INDEX_SCHEMAS[v] for v in versions}, "jzi tile store index",
                             TileStoreError, too_old=f" (a store without block checksums: run `jzi-tiles upgrade "
                                                     f"{root}` to check it and add them, or rebuild it)")
    region = Region.from_dict(m["region"])
    got, want = (region.grid, region.steps, region.view_px), (m["grid"], m["steps"], m["view_px"])
    if got != want:
        raise TileStoreError(f"{index}: region.grid/steps/view_px {'/'.join(map(str, got))} disagree with "
                             f"grid/steps/view_px {'/'.join(map(str, want))}")
    if m["levels"] != levels_table(region):
        raise TileStoreError(f"{index}: the levels table does not match the region")
    files = m["files"]
    if "embeddings" not in files:
        raise TileStoreError(f"{index}: no embeddings file listed")
    expect = {"embeddings": (None, [region.total_views, m["dim"]])}
    if "pixels" in files:
        px = (files["pixels"]["shape"] + [None, None])[1]
        if not isinstance(px, int) or not 1 <= px <= m["view_px"]:
            raise TileStoreError(f"{index}: files.pixels.shape[1] must be a thumbnail size in 1..{m['view_px']}, "
                                 f"got {px!r}")
        expect["pixels"] = ("uint8", [region.total_views, px, px, 3])
    for role, entry in files.items():
        if role not in expect:
            raise TileStoreError(f"{index}: unknown file role '{role}'")
        _check_file_entry(root, index, role, entry, *expect[role])
    return m


def _check_file_entry(root: Path, index: Path, role: str, entry: dict, dtype, shape) -> None:
    name = entry["path"]
    if Path(name).name != name or name.startswith("."):
        raise TileStoreError(f"{index}: files.{role}.path must be a plain file name inside the store, got {name!r}")
    allowed = [dtype] if dtype else list(DTYPES)
    if entry["dtype"] not in allowed:
        raise TileStoreError(f"{index}: files.{role}.dtype must be one of {allowed}, got {entry['dtype']!r}")
    if dtype is None and DTYPES[entry["dtype"]] != name:
        raise TileStoreError(f"{index}: {entry['dtype']} embeddings must be in {DTYPES[entry['dtype']]}, not {name}")
    if entry["shape"] != shape:
        raise TileStoreError(f"{index}: files.{role}.shape is {entry['shape']}, the region needs {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize
    if entry["bytes"] != nbytes:
        raise TileStoreError(f"{index}: files.{role}.bytes is {entry['bytes']}, shape {shape} of "
                             f"{entry['dtype']} needs {nbytes}")
    if "block_rows" in entry:
        blocks = -(-shape[0] // entry["block_rows"])
        if len(entry["block_sha256"]) != blocks:
            raise TileStoreError(f"{index}: files.{role}.block_sha256 holds {len(entry['block_sha256'])} digests, "
                                 f"{shape[0]} rows in blocks of {entry['block_rows']} need {blocks}")
    path = root / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
        raise TileStoreError(f"{root}: {name} is a link; a store's arrays must be its own regular files")
    if not path.is_file():
        raise TileStoreError(f"{root}: {name} is missing")
    actual = path.stat().st_size
    if actual != nbytes:
        raise TileStoreError(f"{root}: {name} holds {actual} bytes, shape {shape} of {entry['dtype']} needs "
                             f"{nbytes} (truncated or corrupt)")


def _map(root: Path, entry: dict, dtype: str) -> np.memmap:
    return np.memmap(root / entry["path"], dtype=_le(dtype), mode="r", shape=tuple(entry["shape"]))


def verify_store(path) -> dict:
    """Full check: index validation, the sha256 of every file and of every block, every embedding
    finite. Raises TileStoreError."""
    store = TileStore(path)
    for role, entry in store.meta["files"].items():
        if sha256_file(store.path / entry["path"]) != entry["sha256"]:
            raise TileStoreError(f"{store.path}: {entry['path']} does not match its sha256 in {INDEX} (corrupt or edited)")
    store.verify_all()
    return {"path": str(store.path), "ok": True, "views": store.total_views,
            "files": {role: e["sha256"] for role, e in store.meta["files"].items()}}


def upgrade_store(path) -> dict:
    """Bring a format_version 1 store to the current format: check its whole-file sha256s and that every
    embedding is finite, then add the block checksums and rewrite ``tiles.json`` atomically."""
    root = Path(path)
    meta = _read_index(root, versions=(1, FORMAT_VERSION))
    if meta["format_version"] == FORMAT_VERSION:
        return {"path": str(root), "upgraded": False, "format_version": FORMAT_VERSION}
    for role, entry in meta["files"].items():
        if sha256_file(root / entry["path"]) != entry["sha256"]:
            raise TileStoreError(f"{root}: {entry['path']} does not match its sha256 in {INDEX} (corrupt or edited); "
                                 "rebuild the store")
        arr = _map(root, entry, entry["dtype"])
        entry["block_rows"] = block_rows_for(arr[0].nbytes)
        entry["block_sha256"] = block_digests(arr, entry["block_rows"])
        if role == "embeddings":
            for start in range(0, len(arr), entry["block_rows"]):
                if not np.isfinite(arr[start:start + entry["block_rows"]]).all():
                    raise TileStoreError(f"{root}: embeddings from row {start} hold NaN or Inf; rebuild the store")
        del arr
    meta["format_version"] = FORMAT_VERSION
    _atomic_json(root / INDEX, meta)
    TileStore(root)  # reads back as a current store
    return {"path": str(root), "upgraded": True, "format_version": FORMAT_VERSION}


# ---------------------------------------------------------------------------------------------
# writing: chunked and idempotent
# ---------------------------------------------------------------------------------------------
Produce = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]
Render = Callable[[np.ndarray], np.ndarray]
CHUNK_ROWS = 1024
RENDER_AHEAD = 2  # batches the side thread renders ahead of the encoder (a few MB each at 384 px)


@dataclass(frozen=True)
class StoreLayout:
    """What one build writes; every worker of a build (shard, Ray actor, rerun) agrees on it.

    The rows are cut into chunks of ``chunk_rows`` (the last one may be shorter); a chunk is the unit
    of work and of resumption.
    """

    region: Region
    dim: int
    encoder_id: str
    dtype: str = "float16"
    thumb_px: int = 0
    chunk_rows: int = CHUNK_ROWS
    meta: dict = field(default_factory=dict)  # extra index keys: encoder_precision, source

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise TileStoreError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.chunk_rows < 1:
            raise TileStoreError(f"chunk rows must be positive, got {self.chunk_rows}")

    @property
    def n_chunks(self) -> int:
        return -(-self.region.total_views // self.chunk_rows)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.region.total_views)

    def files(self) -> dict:
        total = self.region.total_views
        files = {"embeddings": {"path": DTYPES[self.dtype], "dtype": self.dtype, "byte_order": "little",
                                "shape": [total, self.dim], "bytes": total * self.dim * np.dtype(self.dtype).itemsize}}
        if self.thumb_px:
            px = self.thumb_px
            files["pixels"] = {"path": PIXELS, "dtype": "uint8", "byte_order": "little",
                               "shape": [total, px, px, 3], "bytes": total * px * px * 3}
        return files

    def to_dict(self) -> dict:
        return {"region": self.region.to_dict(), "dim": self.dim, "encoder_id": self.encoder_id, "dtype": self.dtype,
                "thumb_px": self.thumb_px, "chunk_rows": self.chunk_rows, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "StoreLayout":
        return cls(Region.from_dict(d["region"]), int(d["dim"]), str(d["encoder_id"]), str(d["dtype"]),
                   int(d["thumb_px"]), int(d["chunk_rows"]), dict(d.get("meta") or {}))


def partial_dir(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _done_marker(partial: Path, chunk: int) -> Path:
    return partial / DONE_DIR / f"{chunk:08d}"


def prepare_build(out, layout: StoreLayout, force: bool = False) -> Path | None:
    """Create (or join) the build of ``out``: ``OUT.partial/`` with the arrays preallocated.

    Safe to call from many processes at once: the plan file is written atomically with the same
    content, and arrays are only ever extended to their size, never truncated or rewritten.
    Returns None when a finished store is already in place (nothing to do).
    """
    out = Path(out)
    partial = partial_dir(out)
    if (partial / INDEX).is_file() and not (partial / BUILD).exists():
        try:  # stopped between finishing and renaming: the partial store is complete
            finished = TileStore(partial)
            if finished.meta["encoder_id"] == layout.encoder_id and finished.meta["region"] == layout.region.to_dict():
                _replace_dir(partial, out)
                return None
        except TileStoreError:
            pass
    if out.exists() and not force:
        raise TileStoreError(f"{out} exists; use --force to replace it")
    plan = json.loads(json.dumps(layout.to_dict()))
    if (partial / BUILD).exists() or (partial / "progress.json").exists():  # the latter: an older builder's record
        try:
            same = json.loads((partial / BUILD).read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            if not force:
                raise TileStoreError(f"{partial} holds an unfinished build with other settings; remove it or use --force")
            shutil.rmtree(partial)
    (partial / DONE_DIR).mkdir(parents=True, exist_ok=True)
    if not (partial / BUILD).exists():
        _atomic_json(partial / BUILD, plan)
    for entry in layout.files().values():
        fd = os.open(partial / entry["path"], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < entry["bytes"]:
                os.ftruncate(fd, entry["bytes"])  # sparse until written
        finally:
            os.close(fd)
    return partial


def open_build(out) -> tuple[Path, StoreLayout]:
    """The partial build of ``out`` and its layout, as recorded by the workers that made it."""
    partial = partial_dir(out)
    try:
        plan = json.loads((partial / BUILD).read_text())
        return partial, StoreLayout.from_dict(plan)
    except FileNotFoundError:
        raise TileStoreError(f"{partial}: no build in progress (nothing to merge)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TileStoreError(f"{partial / BUILD}: unreadable build plan ({e})") from None


def chunks_done(partial: Path, layout: StoreLayout) -> set[int]:
    names = os.listdir(partial / DONE_DIR) if (partial / DONE_DIR).is_dir() else []
    return {int(n) for n in names if n.isdigit() and int(n) < layout.n_chunks}


class ChunkWriter:
    """Writes whole chunks into a prepared build: rows by view id, flushed, then marked done."""

    def __init__(self, partial: Path, layout: StoreLayout):
        self.partial, self.layout = partial, layout
        self.arrays = {role: np.memmap(partial / e["path"], dtype=_le(e["dtype"]), mode="r+", shape=tuple(e["shape"]))
                       for role, e in layout.files().items()}

    def write(self, chunk: int, embeddings: np.ndarray, thumbs: np.ndarray | None) -> None:
        start, stop = self.layout.chunk_range(chunk)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape != (stop - start, self.layout.dim) or not np.isfinite(emb).all():
            raise TileStoreError(f"chunk {chunk}: the encoder returned {emb.shape} or non-finite values for rows "
                                 f"{start}..{stop - 1}")
        self.arrays["embeddings"][start:stop] = emb
        if self.layout.thumb_px:
            px = self.layout.thumb_px
            if thumbs is None or np.shape(thumbs) != (stop - start, px, px, 3):
                raise TileStoreError(f"chunk {chunk}: a pixel pyramid was asked for but no {px} px views were produced")
            self.arrays["pixels"][start:stop] = thumbs
        for arr in self.arrays.values():
            arr.flush()
        _done_marker(self.partial, chunk).write_bytes(b"")  # only after the rows are on disk

    def close(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays.clear()


def make_thumbs(views: np.ndarray | None, px: int) -> np.ndarray | None:
    """uint8 [n, px, px, 3] thumbnails of rendered views (None when no pixel pyramid is built)."""
    import cv2

    if not px:
        return None
    if views is None:
        raise TileStoreError("a pixel pyramid was asked for but no view images were produced")
    return np.stack([cv2.resize(v, (px, px), interpolation=cv2.INTER_AREA) for v in views])


def finalize_store(out) -> Path:
    """Merge a build: check every chunk is marked done, write the index with checksums, move into place."""
    out = Path(out)
    partial, layout = open_build(out)
    missing = sorted(set(range(layout.n_chunks)) - chunks_done(partial, layout))
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise TileStoreError(f"{partial}: {len(missing)} of {layout.n_chunks} chunks are not built yet "
                             f"(chunks {shown}); run the remaining shards or build again without --shard")
    files = layout.files()
    for entry in files.values():
        arr = np.memmap(partial / entry["path"], dtype=_le(entry["dtype"]), mode="r", shape=tuple(entry["shape"]))
        entry["sha256"] = sha256_file(partial / entry["path"])
        entry["block_rows"] = block_rows_for(arr[0].nbytes)
        entry["block_sha256"] = block_digests(arr, entry["block_rows"])
        del arr
    region = layout.region
    index = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "region": region.to_dict(), "grid": region.grid, "steps": region.steps, "view_px": region.view_px,
             "dim": layout.dim, "levels": levels_table(region), "files": files, "encoder_id": layout.encoder_id,
             **layout.meta}
    _atomic_json(partial / INDEX, index)
    (partial / BUILD).unlink()
    shutil.rmtree(partial / DONE_DIR)
    _replace_dir(partial, out)
    return out


@contextmanager
def _nothing_left_unless_kept(out: Path):
    """A one-worker build that fails before it kept any chunk (an encoder or imagery error, Ctrl-C) removes
    the ``OUT.partial/`` it created; once a chunk is kept, the partial build stays to be resumed."""
    partial = out.with_name(out.name + ".partial")
    fresh = not partial.exists()
    try:
        yield
    except BaseException:
        if fresh and not any((partial / DONE_DIR).glob("*")) and not (partial / INDEX).exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise


def write_store(out, region: Region, dim: int, encoder_id: str, produce: Produce, *, dtype: str = "float16",
                thumb_px: int = 0, batch: int = 32, chunk_rows: int = CHUNK_ROWS, meta: dict | None = None,
                force: bool = False, progress: bool = True, shard: tuple[int, int] = (0, 1),
                render: Render | None = None) -> Path | None:
    """Fill a store chunk by chunk from ``produce(rows) -> (embeddings [n, D], views uint8 [n, S, S, 3] or None)``.

    Resumable: the work goes to ``OUT.partial/``; a rerun with the same settings skips the chunks
    marked done. ``shard=(i, N)`` does only chunks ``c % N == i`` and leaves the merge (checksums,
    index, rename) to :func:`finalize_store`; the whole job (``(0, 1)``) merges itself and returns
    the store's path. ``force`` replaces an existing store and discards a mismatched partial build.
    With ``render``, ``produce`` receives ``render(rows)`` (made ahead on a side thread, see
    :func:`build_chunks`) instead of the rows.
    """
    layout = StoreLayout(region, dim, encoder_id, dtype, thumb_px, chunk_rows, dict(meta or {}))
    partial = prepare_build(out, layout, force)
    if partial is None:
        return Path(out)
    build_chunks(partial, layout, produce, batch=batch, shard=shard, progress=progress, label=Path(out).name,
                 render=render)
    return finalize_store(out) if shard[1] == 1 else None


def build_chunks(partial: Path, layout: StoreLayout, produce: Produce, *, batch: int, shard: tuple[int, int],
                 progress: bool, label: str, render: Render | None = None) -> None:
    """The one-worker loop: this shard's chunks not yet done, ``batch`` rows per ``produce`` call.

    A pipeline of two threads, so that rendering and writing overlap with encoding (ONNX Runtime
    releases the GIL while it runs): one side thread runs ``render(rows)`` up to ``RENDER_AHEAD``
    batches ahead and writes each finished chunk (rows, flush, done marker), in order, while the
    calling thread runs ``produce``. ``render`` only ever runs on that side thread, one call at a
    time, so a source that is not thread-safe is fine. Without ``render``, ``produce`` gets the rows
    and only the writes move to the side thread. The batches, and so the bytes written, are the same
    either way. An error in any stage reaches the caller after the chunks finished before it are
    written (a rerun resumes from them).
    """
    from concurrent.futures import ThreadPoolExecutor
    from tqdm import tqdm

    from .shards import shard_chunks

    mine = shard_chunks(layout.n_chunks, shard)
    done = chunks_done(partial, layout)
    todo = [c for c in mine if c not in done]
    rows_of = [layout.chunk_range(c) for c in mine]
    total = sum(b - a for a, b in rows_of)
    already = sum(b - a for c, (a, b) in zip(mine, rows_of) if c in done)
    desc = f"tiles {label}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    bar = tqdm(total=total, initial=already, unit="view", desc=desc, disable=not progress, dynamic_ncols=True,
               smoothing=0.1)
    first_stage = render or _rows_as_they_are
    batches = chunk_batches(layout, todo, batch)
    ahead = deque()  # (chunk, last batch of the chunk?, future of the first stage), in order

    def submit_next() -> None:
        for chunk, rows, last in itertools.islice(batches, 1):
            ahead.append((chunk, last, side.submit(first_stage, rows)))

    writer = ChunkWriter(partial, layout)
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jzi-tiles")
    writes = deque()  # the side thread runs jobs in order, so writes finish in order
    try:
        for _ in range(RENDER_AHEAD):
            submit_next()
        embs, thumbs = [], []
        while ahead:
            chunk, last, rendering = ahead.popleft()
            rendered = rendering.result()  # an error raised while rendering is raised here
            submit_next()
            emb, views = produce(rendered)
            embs.append(np.asarray(emb, dtype=np.float32))
            thumbs.append(make_thumbs(views, layout.thumb_px))
            bar.update(len(embs[-1]))
            if last:
                writes.append(side.submit(writer.write, chunk, np.concatenate(embs),
                                          np.concatenate(thumbs) if layout.thumb_px else None))
                embs, thumbs = [], []
            while writes and writes[0].done():
                writes.popleft().result()  # a failed write stops the build now, not at the end
    except BaseException:
        for *_, rendering in ahead:
            rendering.cancel()  # renders not started yet are dropped; chunks already produced are still written
        raise
    finally:
        side.shutdown(wait=True)
        bar.close()
        writer.close()
    for w in writes:
        w.result()


def chunk_batches(layout: StoreLayout, chunks: list[int], batch: int):
    """(chunk, rows, whether it is the chunk's last batch) for every batch of ``chunks``, in order (lazily:
    a large store has millions)."""
    for chunk in chunks:
        start, stop = layout.chunk_range(chunk)
        for a in range(start, stop, batch):
            yield chunk, np.arange(a, min(a + batch, stop)), a + batch >= stop


def _rows_as_they_are(rows: np.ndarray) -> np.ndarray:
    return rows


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished store into place; an old store at ``dst`` is removed only after the swap."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{int(time.time())}")
    os.replace(dst, old)
    os.replace(src, dst)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def view_geometry(region: Region, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres [n, 2] and sides [n] in metres of the views at store ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets = np.array([region.level_offset(lvl) for lvl in range(region.steps + 1)])
    levels = np.searchsorted(offsets, rows, side="right") - 1
    centres = np.empty((len(rows), 2))
    for lvl in np.unique(levels):
        sel = levels == lvl
        paths = region.index_path(int(lvl), rows[sel] - offsets[lvl])
        centres[sel] = region.path_center(paths) if lvl else region.center
    return centres, region.level_size_m(levels)


def plan_build(bundle_dir, *, dtype: str = "float16", thumb_px: int = 0, chunk_rows: int = CHUNK_ROWS,
               region: Region | None = None, source=None, opened=None) -> tuple[dict, StoreLayout]:
    """The bundle's manifest and the layout of the store it builds over ``region`` (default: the bundle's)."""
    from .bundle import load_manifest

    manifest = load_manifest(bundle_dir)
    if region is None:
        region = Region.from_dict(manifest["region"])
    if region.view_px != int(manifest["image_size"]):
        raise TileStoreError(f"the region's view_px {region.view_px} differs from the bundle's image_size "
                             f"{manifest['image_size']}")
    if (region.grid, region.steps) != (int(manifest["grid"]), int(manifest["steps"])):
        raise TileStoreError(f"the region's grid/steps {region.grid}/{region.steps} differ from the bundle's "
                             f"{manifest['grid']}/{manifest['steps']}")
    meta = {"encoder_precision": manifest["precision"], "source": str(source)}
    if source is not None:  # recorded so that jzi-tiles info can say which levels were upsampled
        from .imagery import open_source

        src = opened if opened is not None else open_source(source)  # ``opened``: the caller's, not reopened
        meta["source_meters_per_pixel"] = src.meters_per_pixel(region.center)
    return manifest, StoreLayout(region, int(manifest["width"]), manifest["encoder_id"], dtype, thumb_px, chunk_rows,
                                 meta)


def render_views(src, region: Region, rows: np.ndarray) -> np.ndarray:
    """The views at store ``rows`` rendered from an opened imagery source: uint8 [n, S, S, 3]."""
    centres, sizes = view_geometry(region, rows)
    return src.render_many(centres, sizes, region.view_px)


def view_stages(src, region: Region, engine) -> tuple[Render, Produce]:
    """A build's two stages from imagery: ``render`` (rows -> views; build_chunks runs it on its side thread,
    ahead) and ``produce`` (views -> their embeddings from ``engine``'s view encoder, and the views)."""

    def render(rows: np.ndarray) -> np.ndarray:
        return render_views(src, region, rows)

    def produce(views: np.ndarray):
        return engine.encode_views(views), views

    return render, produce


def build_store(out, bundle_dir, source, *, backend: str = "auto", threads: int | None = None,
                dtype: str = "float16", batch: int = 32, chunk_rows: int = CHUNK_ROWS, thumb_px: int = 0,
                region: Region | None = None, force: bool = False, progress: bool = True,
                shard: tuple[int, int] = (0, 1), warn: Callable[[str], None] | None = None) -> Path | None:
    """Render every view of the region from ``source`` and encode it with the bundle's view encoder.

    A region the imagery does not cover is refused up front (naming one that fits); imagery coarser
    than some levels' views is one line to ``warn`` (default: stderr). With ``shard=(i, N)``, N > 1,
    only this shard's chunks are built and None is returned: merge with :func:`finalize_store`
    (``jzi-tiles merge``) once every shard has finished.
    """
    from .backends import open_backend
    from .imagery import check_region_fits, coarse_imagery_warning, open_source

    src = open_source(source)
    manifest, layout = plan_build(bundle_dir, dtype=dtype, thumb_px=thumb_px, chunk_rows=chunk_rows, region=region,
                                  source=source, opened=src)
    region = layout.region
    check_region_fits(src, region)
    engine = open_backend(bundle_dir, manifest, backend=backend, threads=threads, graphs=("view_encoder",))
    note = coarse_imagery_warning(region, src.meters_per_pixel(region.center))  # after the refusals: one line each
    if note:
        (warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr)))(note)

    render, produce = view_stages(src, layout.region, engine)
    settings = dict(batch=batch, shard=shard, progress=progress, label=Path(out).name, render=render)
    if shard[1] > 1:  # other shards share the partial build: never remove it from here
        partial = prepare_build(out, layout, force)
        if partial is not None:
            build_chunks(partial, layout, produce, **settings)
        return None
    with _nothing_left_unless_kept(Path(out)):
        partial = prepare_build(out, layout, force)
        if partial is None:
            return Path(out)
        build_chunks(partial, layout, produce, **settings)
    return finalize_store(out)
