"""The tile store: every satellite view of a region, encoded once, memory-mapped at query time.

A store is a directory ``REGION.jzt``::

    tiles.json        what the arrays hold (below); the only file a reader parses
    embeddings.f16    raw little-endian float16 [total_views, D]   (embeddings.f32 when built in fp32)
    pixels.u8         optional raw uint8 [total_views, P, P, 3] RGB thumbnails for visualisation

Row ``Region.level_offset(level) + Region.path_index(path)`` holds the view reached by ``path``
(levels 0 .. steps-1), so the 16 children of a cell are 16 contiguous rows. Raw arrays plus JSON
mean a C/C++ reader needs nothing else: ``tiles.json`` gives dtype, byte order, shape and offset 0.

``tiles.json``: format ("jzi-tiles"), format_version, created, region (a Region dict), grid,
steps, view_px, dim, levels [{level, offset, count, size_m, meters_per_pixel}], files {role:
{path, dtype, byte_order, shape, bytes, sha256}}, encoder_id (the bundle's; a runtime refuses a
store made by other encoder weights), encoder_precision, source (what the views were rendered from).

Opening reads the JSON and maps the arrays: no checksums, so it is fast (tens of microseconds
for the JSON, nothing proportional to the region). ``verify_store`` checks the sha256s and that
every value is finite. A store is untrusted input: every field, size and shape is validated.

Building (``write_store``) goes into ``REGION.jzt.partial/`` with a ``progress.json`` record
updated after every flushed batch, resumes from it when run again with the same settings, and
renames the directory into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle import read_json_document, sha256_file
from .geometry import Region

FORMAT = "jzi-tiles"
FORMAT_VERSION = 1
INDEX = "tiles.json"
PROGRESS = "progress.json"
DTYPES = {"float16": "embeddings.f16", "float32": "embeddings.f32"}
PIXELS = "pixels.u8"
_LIMITS = {"grid": (2, 16), "steps": (1, 12), "dim": (1, 1 << 16), "view_px": (1, 1 << 14)}


class TileStoreError(ValueError):
    """A tile store that cannot be used, with one line saying why."""


def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def levels_table(region: Region) -> list[dict]:
    return [{"level": lvl, "offset": region.level_offset(lvl), "count": region.n_views(lvl),
             "size_m": float(region.level_size_m(lvl)), "meters_per_pixel": float(region.meters_per_pixel(lvl))}
            for lvl in range(region.steps)]


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class TileStore:
    """An opened store: ``embeddings`` [total_views, D] and optional ``pixels`` as read-only memmaps."""

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
        return np.array(self.pixels[self.row_of_path(path)])

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


def _read_index(root: Path) -> dict:
    if not root.is_dir():
        raise TileStoreError(f"{root}: not a tile store directory")
    index = root / INDEX
    if not index.is_file():
        hint = " (an unfinished build: run jzi-tiles build again to resume it)" if root.name.endswith(".partial") else ""
        raise TileStoreError(f"{root}: no {INDEX}; is this a jzi tile store (made by jzi-tiles build)?{hint}")
    m = read_json_document(index, FORMAT, FORMAT_VERSION, "jzi tile store index", TileStoreError,
                           ("region", "grid", "steps", "view_px", "dim", "levels", "files", "encoder_id"))
    for key, (lo, hi) in _LIMITS.items():
        if not isinstance(m[key], int) or isinstance(m[key], bool) or not lo <= m[key] <= hi:
            raise TileStoreError(f"{index}: '{key}' must be an integer in {lo}..{hi}, got {m[key]!r}")
    if not isinstance(m["region"], dict):
        raise TileStoreError(f"{index}: 'region' must be an object")
    try:
        region = Region.from_dict(m["region"])
        ok = all(np.isfinite([region.center_lat, region.center_lon, region.size_m])) and region.size_m > 0
    except (TypeError, ValueError) as e:
        raise TileStoreError(f"{index}: bad region ({e})") from None
    if not ok or (region.grid, region.steps, region.view_px) != (m["grid"], m["steps"], m["view_px"]):
        raise TileStoreError(f"{index}: region does not agree with grid/steps/view_px")
    if m["levels"] != levels_table(region):
        raise TileStoreError(f"{index}: the levels table does not match the region")
    if not isinstance(m["encoder_id"], str) or not m["encoder_id"]:
        raise TileStoreError(f"{index}: 'encoder_id' must be a non-empty string")
    files = m["files"]
    if not isinstance(files, dict) or "embeddings" not in files:
        raise TileStoreError(f"{index}: no embeddings file listed")
    expect = {"embeddings": (None, [region.total_views, m["dim"]])}
    if "pixels" in files:
        px = files["pixels"].get("shape", [None, 0])[1] if isinstance(files["pixels"], dict) else 0
        if not isinstance(px, int) or not 1 <= px <= m["view_px"]:
            raise TileStoreError(f"{index}: bad pixel pyramid size {px!r}")
        expect["pixels"] = ("uint8", [region.total_views, px, px, 3])
    for role, entry in files.items():
        if role not in expect:
            raise TileStoreError(f"{index}: unknown file role '{role}'")
        _check_file_entry(root, index, role, entry, *expect[role])
    return m


def _check_file_entry(root: Path, index: Path, role: str, entry, dtype, shape) -> None:
    if not isinstance(entry, dict):
        raise TileStoreError(f"{index}: files.{role} must be an object")
    name = entry.get("path")
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise TileStoreError(f"{index}: files.{role}.path must be a plain file name inside the store")
    allowed = [dtype] if dtype else list(DTYPES)
    if entry.get("dtype") not in allowed:
        raise TileStoreError(f"{index}: files.{role}.dtype must be one of {allowed}, got {entry.get('dtype')!r}")
    if dtype is None and DTYPES[entry["dtype"]] != name:
        raise TileStoreError(f"{index}: {entry['dtype']} embeddings must be in {DTYPES[entry['dtype']]}")
    if entry.get("byte_order", "little") != "little":
        raise TileStoreError(f"{index}: files.{role} must be little-endian")
    if entry.get("shape") != shape:
        raise TileStoreError(f"{index}: files.{role}.shape is {entry.get('shape')}, the region needs {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize
    path = root / name
    if not path.is_file():
        raise TileStoreError(f"{root}: {name} is missing")
    actual = path.stat().st_size
    if entry.get("bytes") != nbytes or actual != nbytes:
        raise TileStoreError(f"{root}: {name} holds {actual} bytes, shape {shape} needs {nbytes} (truncated or corrupt)")


def _map(root: Path, entry: dict, dtype: str) -> np.memmap:
    return np.memmap(root / entry["path"], dtype=_le(dtype), mode="r", shape=tuple(entry["shape"]))


def verify_store(path, chunk_rows: int = 8192) -> dict:
    """Full check: index validation, sha256 of every file, every embedding finite. Raises TileStoreError."""
    store = TileStore(path)
    for role, entry in store.meta["files"].items():
        if sha256_file(store.path / entry["path"]) != entry.get("sha256"):
            raise TileStoreError(f"{store.path}: {entry['path']} does not match its sha256 in {INDEX} (corrupt or edited)")
    emb = store.embeddings
    for start in range(0, len(emb), chunk_rows):
        block = np.asarray(emb[start:start + chunk_rows], dtype=np.float32)
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise TileStoreError(f"{store.path}: embedding row {row} holds NaN or Inf")
    return {"path": str(store.path), "ok": True, "views": store.total_views,
            "files": {role: e["sha256"] for role, e in store.meta["files"].items()}}


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
Produce = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]


def write_store(out, region: Region, dim: int, encoder_id: str, produce: Produce, *, dtype: str = "float16",
                thumb_px: int = 0, batch: int = 32, meta: dict | None = None, force: bool = False,
                progress: bool = True) -> Path:
    """Fill a store row by row from ``produce(rows) -> (embeddings [n, D], views uint8 [n, S, S, 3] or None)``.

    Resumable: the work goes to ``OUT.partial/``; rerunning with the same settings continues after the
    last flushed batch. ``force`` replaces an existing store and discards a mismatched partial build.
    """
    import cv2
    from tqdm import tqdm

    out = Path(out)
    if dtype not in DTYPES:
        raise TileStoreError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if out.exists() and not force:
        raise TileStoreError(f"{out} exists; use --force to replace it")
    total = region.total_views
    emb_entry = {"path": DTYPES[dtype], "dtype": dtype, "byte_order": "little", "shape": [total, dim],
                 "bytes": total * dim * np.dtype(dtype).itemsize}
    files = {"embeddings": emb_entry}
    if thumb_px:
        files["pixels"] = {"path": PIXELS, "dtype": "uint8", "byte_order": "little",
                           "shape": [total, thumb_px, thumb_px, 3], "bytes": total * thumb_px * thumb_px * 3}
    fingerprint = {"region": region.to_dict(), "dim": dim, "dtype": dtype, "thumb_px": thumb_px,
                   "encoder_id": encoder_id, "source": (meta or {}).get("source")}

    partial = out.with_name(out.name + ".partial")
    if (partial / INDEX).is_file() and not (partial / PROGRESS).exists():
        try:  # stopped between finishing and renaming: the partial store is complete
            finished = TileStore(partial)
            if finished.meta["encoder_id"] == encoder_id and finished.meta["region"] == region.to_dict():
                _replace_dir(partial, out)
                return out
        except TileStoreError:
            pass
    done = _resume_point(partial, fingerprint, force)
    partial.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for role, entry in files.items():
        f = partial / entry["path"]
        if not f.exists() or done == 0:
            with open(f, "wb") as fh:
                fh.truncate(entry["bytes"])  # sparse until written
        arrays[role] = np.memmap(f, dtype=_le(entry["dtype"]), mode="r+", shape=tuple(entry["shape"]))

    bar = tqdm(total=total, initial=done, unit="view", desc=f"tiles {out.name}", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        for start in range(done, total, batch):
            rows = np.arange(start, min(start + batch, total))
            emb, views = produce(rows)
            emb = np.asarray(emb, dtype=np.float32)
            if emb.shape != (len(rows), dim) or not np.isfinite(emb).all():
                raise TileStoreError(f"the encoder returned {emb.shape} or non-finite values for rows {start}..")
            arrays["embeddings"][start:start + len(rows)] = emb
            if thumb_px:
                if views is None:
                    raise TileStoreError("a pixel pyramid was asked for but no view images were produced")
                arrays["pixels"][start:start + len(rows)] = [
                    cv2.resize(v, (thumb_px, thumb_px), interpolation=cv2.INTER_AREA) for v in views]
            for arr in arrays.values():
                arr.flush()
            _atomic_json(partial / PROGRESS, {"rows_done": int(rows[-1]) + 1, "fingerprint": fingerprint})
            bar.update(len(rows))
    finally:
        bar.close()
        for arr in arrays.values():
            arr.flush()
        del arrays

    for entry in files.values():
        entry["sha256"] = sha256_file(partial / entry["path"])
    index = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "region": region.to_dict(), "grid": region.grid, "steps": region.steps, "view_px": region.view_px,
             "dim": dim, "levels": levels_table(region), "files": files, "encoder_id": encoder_id, **(meta or {})}
    _atomic_json(partial / INDEX, index)
    (partial / PROGRESS).unlink()
    _replace_dir(partial, out)
    return out


def _resume_point(partial: Path, fingerprint: dict, force: bool) -> int:
    """Rows already done in a partial build with the same settings (0 for a fresh build)."""
    if not partial.exists() or not (partial / PROGRESS).exists():
        return 0  # nothing flushed yet: start afresh (the arrays are recreated)
    try:
        record = json.loads((partial / PROGRESS).read_text())
        same = record.get("fingerprint") == json.loads(json.dumps(fingerprint))
        rows = int(record.get("rows_done", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        same, rows = False, 0
    if same:
        return rows
    if not force:
        raise TileStoreError(f"{partial} holds an unfinished build with other settings; remove it or use --force")
    shutil.rmtree(partial)
    return 0


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


def build_store(out, bundle_dir, source, *, backend: str = "auto", threads: int | None = None,
                dtype: str = "float16", batch: int = 32, thumb_px: int = 0, region: Region | None = None,
                force: bool = False, progress: bool = True, warn: Callable[[str], None] | None = None) -> Path:
    """Render every view of the region from ``source`` and encode it with the bundle's view encoder.

    A region the imagery does not cover is refused up front (naming one that fits); imagery coarser
    than some levels' views is one line to ``warn`` (default: stderr), and its resolution is recorded."""
    from .backends import open_backend
    from .bundle import load_manifest
    from .imagery import check_region_fits, coarse_imagery_warning, open_source

    manifest = load_manifest(bundle_dir)
    if region is None:
        region = Region.from_dict(manifest["region"])
    if region.view_px != int(manifest["image_size"]):
        raise TileStoreError(f"the region's view_px {region.view_px} differs from the bundle's image_size "
                             f"{manifest['image_size']}")
    if (region.grid, region.steps) != (int(manifest["grid"]), int(manifest["steps"])):
        raise TileStoreError(f"the region's grid/steps {region.grid}/{region.steps} differ from the bundle's "
                             f"{manifest['grid']}/{manifest['steps']}")
    src = open_source(source)
    check_region_fits(src, region)
    source_mpp = src.meters_per_pixel(region.center)
    note = coarse_imagery_warning(region, source_mpp)
    if note:
        (warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr)))(note)
    engine = open_backend(bundle_dir, manifest, backend=backend, threads=threads, graphs=("view_encoder",))
    px = region.view_px

    def produce(rows: np.ndarray):
        centres, sizes = view_geometry(region, rows)
        views = src.render_many(centres, sizes, px)
        return engine.encode_views(views), views

    meta = {"encoder_precision": manifest["precision"], "source": str(source), "source_meters_per_pixel": source_mpp}
    return write_store(out, region, int(manifest["width"]), manifest["encoder_id"], produce, dtype=dtype,
                       thumb_px=thumb_px, batch=batch, meta=meta, force=force, progress=progress)
