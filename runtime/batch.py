"""Batch localization into a table: ``jzi-run PHOTOS --out results.parquet|csv [--shard I/N | --ray]``.

One row per photo, in input order:

    photo            the photo as listed (path, or the CSV's image_id)
    latitude, longitude    the answer (empty when the photo could not be read)
    zoom_path        the chosen cell per step, like the dataset's ``sequence`` ("[4, 13, 1, 7]" in CSV)
    step_probs       the chosen cell's probability per step
    confidence       their product
    truth_latitude, truth_longitude, error_m    when the input CSV gives the truth
    failure          why a photo has no answer (unreadable, too large); empty otherwise

The photos are cut into chunks of ``chunk_size``; each finished chunk is written to
``OUT.parts/NNNNNNNN.json`` (atomically: the file is its own done marker) with the plan of the run
in ``OUT.parts/plan.json``. A rerun of the same command skips finished chunks, shards (``--shard``)
and Ray actors fill the same folder, and the run that finds every chunk finished writes OUT
(Parquet needs pyarrow, which ``jzi[ray]`` brings) and removes the parts.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .geometry import distance_m
from .images import ImageError, load_rgb

COLUMNS = ("photo", "latitude", "longitude", "zoom_path", "step_probs", "confidence", "truth_latitude",
           "truth_longitude", "error_m", "failure")
FORMATS = (".parquet", ".csv")
CHUNK_SIZE = 64
PLAN = "plan.json"


class BatchError(ValueError):
    """A batch run that cannot go on, with one line saying why."""


def output_format(out) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise BatchError(f"--out must end in {' or '.join(FORMATS)}, got {Path(out).name!r}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise BatchError("Parquet output needs pyarrow (pip install pyarrow, or 'jzi[ray]'); or write .csv") from None
    return suffix


def localize_chunk(loc, queries, *, beams: int = 1, batch: int = 1, max_pixels: int | None = None) -> list[dict]:
    """Rows for ``queries`` (objects with ``label``, ``path``, ``truth``), ``batch`` photos per encoder call."""
    rows: list[dict | None] = [None] * len(queries)
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        for (i, _), r in zip(pending, loc.localize_batch([img for _, img in pending], beams=beams)):
            q = queries[i]
            err = float(distance_m([r.latitude, r.longitude], q.truth)) if q.truth else None
            rows[i] = _row(q, latitude=r.latitude, longitude=r.longitude, zoom_path=[int(a) for a in r.path],
                           step_probs=[float(p) for p in r.step_probs], confidence=float(r.confidence), error_m=err)
        pending.clear()

    for i, q in enumerate(queries):
        try:
            pending.append((i, load_rgb(q.path, max_pixels) if max_pixels else load_rgb(q.path)))
        except ImageError as e:
            rows[i] = _row(q, failure=str(e))
            continue
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return rows


def _row(q, **values) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(photo=q.label, failure="")
    row.update(values)
    if q.truth is not None:
        row.update(truth_latitude=float(q.truth[0]), truth_longitude=float(q.truth[1]))
    return row


class ResultsTable:
    """The parts folder of one batch run: which chunks are done, writing them, and the final table."""

    def __init__(self, out, queries, fingerprint: dict, chunk_size: int = CHUNK_SIZE):
        self.out = Path(out)
        self.format = output_format(self.out)
        if chunk_size < 1:
            raise BatchError(f"--chunk-size must be positive, got {chunk_size}")
        self.queries, self.chunk_size = list(queries), chunk_size
        self.parts = self.out.with_name(self.out.name + ".parts")
        digest = hashlib.sha256(json.dumps([[q.label, str(q.path), q.truth] for q in self.queries]).encode()).hexdigest()
        self.plan = {"photos": len(self.queries), "photos_sha256": digest, "chunk_size": chunk_size, **fingerprint}

    @property
    def n_chunks(self) -> int:
        return -(-len(self.queries) // self.chunk_size)

    def chunk(self, c: int) -> list:
        return self.queries[c * self.chunk_size:(c + 1) * self.chunk_size]

    def open(self, force: bool = False) -> "ResultsTable":
        """Create or join the parts folder; refuses one left by a different run unless ``force``."""
        if self.out.exists() and not force:
            raise BatchError(f"{self.out} exists; use --force to replace it")
        plan = json.loads(json.dumps(self.plan))
        if (self.parts / PLAN).exists():
            try:
                same = json.loads((self.parts / PLAN).read_text()) == plan
            except (OSError, ValueError):
                same = False
            if not same:
                if not force:
                    raise BatchError(f"{self.parts} holds the results of a different run (other photos, models or "
                                     f"settings); remove it or use --force")
                shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        if not (self.parts / PLAN).exists():
            _atomic_write(self.parts / PLAN, json.dumps(plan, indent=1))
        return self

    def _part(self, c: int) -> Path:
        return self.parts / f"{c:08d}.json"

    def done(self) -> set[int]:
        return {c for c in range(self.n_chunks) if self._part(c).is_file()}

    def write(self, c: int, rows: list[dict]) -> None:
        if len(rows) != len(self.chunk(c)):
            raise BatchError(f"chunk {c}: {len(rows)} results for {len(self.chunk(c))} photos")
        _atomic_write(self._part(c), json.dumps(rows))

    def finish(self) -> Path | None:
        """Write the table when every chunk is done (None otherwise), then drop the parts."""
        if self.done() != set(range(self.n_chunks)):
            return None
        rows = [row for c in range(self.n_chunks) for row in json.loads(self._part(c).read_text())]
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        (write_parquet if self.format == ".parquet" else write_csv)(tmp, rows)
        os.replace(tmp, self.out)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else json.dumps(v) if isinstance(v, list) else repr(v) if isinstance(v, float)
                            else v) for k, v in row.items()})


def write_parquet(path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f64, text = pa.float64(), pa.string()
    schema = pa.schema([("photo", text), ("latitude", f64), ("longitude", f64), ("zoom_path", pa.list_(pa.int64())),
                        ("step_probs", pa.list_(f64)), ("confidence", f64), ("truth_latitude", f64),
                        ("truth_longitude", f64), ("error_m", f64), ("failure", text)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_table(path) -> list[dict]:
    """The rows of a results table (Parquet or CSV) as dicts with the types they were written with."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lists, floats = ("zoom_path", "step_probs"), ("latitude", "longitude", "confidence", "truth_latitude",
                                                 "truth_longitude", "error_m")
    return [{k: (None if v == "" and k != "failure" else json.loads(v) if k in lists else float(v) if k in floats
                 else v) for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------------------------------------
# running a batch: one process (or one shard), or Ray
# ---------------------------------------------------------------------------------------------
def run_fingerprint(manifest: dict, store, beams: int) -> dict:
    """What makes two runs' results interchangeable: the models, the store, the search."""
    return {"encoder_id": manifest["encoder_id"], "precision": manifest["precision"],
            "store_sha256": store.meta["files"]["embeddings"].get("sha256"), "beams": beams}


def run_batch(args, queries, problems: list[str], prog: str = "jzi-run") -> int:
    """``jzi-run ... --out TABLE [--shard I/N | --ray [ADDRESS]]``: localize into a table, resumably."""
    from . import ray_jobs
    from .bundle import load_manifest
    from .localizer import Localizer, check_pair
    from .run_cli import RECALL_M, recall_summary
    from .shards import resolve_shard, shard_chunks
    from .tiles import TileStore

    if not args.out:
        raise BatchError("--shard and --ray write a results table: add --out results.parquet (or .csv)")
    if args.json or args.geojson or args.viz:
        raise BatchError("--out writes a results table; --json, --geojson and --viz are for runs without it")
    if args.ray is not None and args.shard:
        raise BatchError("--shard and --ray do not mix: Ray splits the work itself")
    shard = (0, 1) if args.ray is not None else resolve_shard(args.shard)
    if args.ray is not None:
        opts = ray_jobs.options_from_args(args)
        ray_jobs.import_ray()
    output_format(args.out)
    manifest = load_manifest(args.engine, verify=not args.no_verify)
    store = TileStore(args.tiles)
    check_pair(manifest, store)
    table = ResultsTable(args.out, queries, run_fingerprint(manifest, store, args.beams), args.chunk_size)
    table.open(force=args.force)
    for line in problems:
        print(f"{prog}: {line}", file=sys.stderr)
    done = table.done()
    if any(c not in done for c in shard_chunks(table.n_chunks, shard)):
        settings = dict(backend=args.backend, threads=args.threads)
        run = dict(beams=args.beams, batch=args.batch, max_pixels=args.max_pixels)
        if args.ray is not None:
            failed = ray_jobs.localize_ray(table, ray_jobs.PhotoChunks(args.engine, args.tiles, **settings, **run),
                                           opts, progress=not args.quiet)
            if failed:
                raise BatchError(f"{len(failed)} chunk(s) of photos failed, the rest are written; run again to retry "
                                 f"them: {ray_jobs.describe_failures(failed)}")
        else:
            loc = Localizer(args.engine, store, verify_bundle=False, **settings)  # checked just above
            run_local(table, loc, shard=shard, progress=not args.quiet, **run)
    if shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]} of {args.out} done; when every shard is, run the same command "
              f"without --shard to write {args.out}")
        return 0
    out = table.finish()
    if out is None:
        raise BatchError(f"{table.parts}: chunks {sorted(set(range(table.n_chunks)) - table.done())} are missing")
    rows = read_table(out)
    failures = [r for r in rows if r["failure"]]
    for r in failures:
        print(f"{prog}: {r['failure']}", file=sys.stderr)
    errors = np.array([r["error_m"] for r in rows if r["error_m"] is not None])
    line = f"wrote {out}: {len(rows)} photos, {len(failures)} failed"
    if len(errors):
        summary = recall_summary(errors)
        line += "; {} with truth: {}".format(summary["n"], "  ".join(f"R@{m}m {100 * summary[f'R@{m}m']:.1f}%"
                                                                      for m in RECALL_M))
    print(line)
    return 1 if failures or problems else 0


def run_local(table: ResultsTable, loc, *, shard=(0, 1), beams: int = 1, batch: int = 1, max_pixels=None,
              progress: bool = True) -> None:
    """This shard's chunks that are not done yet, one after the other, each written when finished."""
    from tqdm import tqdm

    from .shards import shard_chunks

    mine = shard_chunks(table.n_chunks, shard)
    done = table.done()
    bar = tqdm(total=sum(len(table.chunk(c)) for c in mine), initial=sum(len(table.chunk(c)) for c in mine if c in done),
               unit="photo", desc=f"{table.out.name}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""),
               disable=not progress, dynamic_ncols=True)
    try:
        for c in mine:
            if c in done:
                continue
            table.write(c, localize_chunk(loc, table.chunk(c), beams=beams, batch=batch, max_pixels=max_pixels))
            bar.update(len(table.chunk(c)))
    finally:
        bar.close()
