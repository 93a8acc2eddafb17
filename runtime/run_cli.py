"""``jzi-run``: localize street photos.

    jzi-run --engine BUNDLE --tiles REGION.jzt query.jpg [more.jpg | folder/ | list.csv]
            [--beams k] [--json] [--geojson out.geojson] [--resume PREVIOUS] [--viz out.png [--source IMAGERY]]
    jzi-run --engine BUNDLE --tiles REGION.jzt PHOTOS... --out results.parquet|csv [--shard I/N | --ray [ADDRESS]]

Prints "photo  latitude, longitude" per photo. A CSV lists photos in a ``path`` column (relative to
the CSV) or in the authors' dataset format (``image_id`` with ``streetview/images/{id}_undistorted.jpg``
beside the CSV or one folder up); with ``latitude``/``longitude`` columns each line also gets its
error in metres and a summary of R@40/50/100m follows. A photo that cannot be read is one line on
stderr and the rest go on; the exit status is then 1.

Answers are written as they come (``run_output``): ``--json`` prints JSON Lines, ``--geojson``
streams a FeatureCollection that is closed properly even on Ctrl-C (exit status 130). Every
failure is listed with its reason. ``--resume PREVIOUS`` skips the photos already answered in a
previous ``--json`` or ``--geojson`` output, e.g.::

    jzi-run ... --json > run.jsonl                       # interrupted part-way
    jzi-run ... --json --resume run.jsonl >> run.jsonl   # does the rest

With ``--out`` the answers go to a table, one row per photo, written chunk by chunk so that a rerun
resumes; ``--shard`` and ``--ray`` split the chunks among processes or a Ray cluster (batch.py).
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ray_jobs
from .backends import BACKENDS, BackendUnavailable
from .batch import CHUNK_SIZE, run_batch
from .bundle import BundleError
from .geometry import distance_m
from . import images
from .images import MAX_PIXELS, ImageError, list_images, load_rgb
from .localizer import Localizer, LocalizerError
from .run_output import RECALL_M, GeoJsonOutput, JsonLinesOutput, TextOutput, previous_answers
from .tiles import TileStoreError

PROG = "jzi-run"


@dataclass
class Query:
    label: str
    path: Path
    truth: tuple[float, float] | None = None


def _csv_queries(csv_path: Path, problems: list[tuple[str, str]]) -> list[Query]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{csv_path}: cannot read the CSV ({e})") from None
    if not rows:
        return []
    cols = {c.strip().lower(): c for c in rows[0] if c}
    key = next((cols[c] for c in ("path", "image", "file", "image_id") if c in cols), None)
    if key is None:
        raise ValueError(f"{csv_path}: needs a 'path' or 'image_id' column, has {list(cols)}")
    lat_key, lon_key = cols.get("latitude", cols.get("lat")), cols.get("longitude", cols.get("lon"))
    out = []
    for n, row in enumerate(rows, start=2):
        name = (row.get(key) or "").strip()
        if not name:
            problems.append((f"{csv_path}:{n}", f"{csv_path}:{n}: empty {key}"))
            continue
        truth = None
        if lat_key and lon_key:
            try:
                truth = (float(row[lat_key]), float(row[lon_key]))
                if not (-90 <= truth[0] <= 90 and -180 <= truth[1] <= 180):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append((f"{csv_path}:{n}", f"{csv_path}:{n}: bad latitude/longitude {row.get(lat_key)!r}, "
                                                    f"{row.get(lon_key)!r}"))
                continue
        out.append(Query(name, _resolve(csv_path.parent, name, key.lower() == "image_id"), truth))
    return out


def _resolve(folder: Path, name: str, is_id: bool) -> Path:
    candidates = [folder / name]
    if is_id:
        candidates = [folder / "streetview" / "images" / f"{name}_undistorted.jpg",
                      folder.parent / "streetview" / "images" / f"{name}_undistorted.jpg", folder / name,
                      folder / f"{name}.jpg"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def gather(inputs: list[str], problems: list[tuple[str, str]]) -> list[Query]:
    """The photos named by ``inputs``; what cannot be used goes to ``problems`` as (label, one line)."""
    queries = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                problems.append((str(p), f"{p}: no images in this folder"))
            queries += [Query(str(f), f) for f in found]
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                problems.append((str(p), f"{p}: no such file"))
            else:
                queries += _csv_queries(p, problems)
        else:
            queries.append(Query(str(p), p))
    return queries


def recall_summary(errors: np.ndarray) -> dict:
    return {"n": int(len(errors)), **{f"R@{m}m": float(np.mean(errors <= m)) for m in RECALL_M},
            "median_error_m": float(np.median(errors)), "mean_error_m": float(np.mean(errors))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Localize street photos with a jzi bundle and tile store.")
    p.add_argument("inputs", nargs="+", help="photos, folders of photos, or CSV lists (with truth if known)")
    p.add_argument("--engine", required=True, metavar="BUNDLE", help="model bundle made by jzi-export")
    p.add_argument("--tiles", required=True, metavar="REGION.jzt", help="tile store made by jzi-tiles build")
    p.add_argument("--beams", type=int, default=1, help="beam search width; >1 also reports the top-k cells (1)")
    p.add_argument("--batch", type=int, default=1, help="photos per encoder call (1)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS + ("native",),
                   help="inference backend (auto); native: the C++ runtime jzi.native (make native)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: all cores)")
    p.add_argument("--json", action="store_true",
                   help="print JSON Lines: one object per answer or failure as it comes, then a summary line")
    p.add_argument("--geojson", metavar="OUT", help="write the answers (and truths) as a GeoJSON FeatureCollection")
    p.add_argument("--resume", metavar="PREVIOUS",
                   help="skip photos already answered in PREVIOUS (an earlier --json or --geojson output)")
    p.add_argument("--viz", metavar="OUT.png", help="draw the zoom path of the first photo")
    p.add_argument("--source", metavar="IMAGERY", help="imagery to draw the --viz views from, at full size "
                   "(sharper than the store's thumbnails; needed when it has none)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"refuse larger photos ({MAX_PIXELS})")
    p.add_argument("--no-verify", action="store_true", help="skip the bundle checksum check at start-up")
    t = p.add_argument_group("batch runs into a table (resumable)")
    t.add_argument("--out", metavar="TABLE", help="write one row per photo to results.parquet or results.csv")
    t.add_argument("--shard", metavar="I/N", help="localize only shard I of N of the chunks (default: from RANK/"
                   "WORLD_SIZE, SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX/WORLD_SIZE when set)")
    t.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help=f"photos per chunk ({CHUNK_SIZE})")
    t.add_argument("--force", action="store_true", help="replace an existing table / discard another run's parts")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    ray_jobs.add_arguments(p)
    return p


def _localizer(args):
    """The Python Localizer, or with ``--backend native`` the C++ one (same API, same results)."""
    if args.backend != "native":
        return Localizer(args.engine, args.tiles, backend=args.backend, threads=args.threads,
                         verify_bundle=not args.no_verify)
    try:
        from jzi.native import Localizer as NativeLocalizer
    except ImportError as e:
        raise BackendUnavailable(f"native backend not available: jzi.native is not built (make native): {e}") from None
    return NativeLocalizer(args.engine, args.tiles, threads=args.threads, verify_bundle=not args.no_verify)


def run(args) -> int:
    if args.beams < 1 or args.batch < 1:
        raise ValueError("--beams and --batch must be at least 1")
    if args.max_pixels < 1:
        raise ValueError("--max-pixels must be positive")
    problems: list[tuple[str, str]] = []
    queries = gather(args.inputs, problems)
    if not queries and not problems:
        raise ValueError("no photos given (the CSV lists none)")
    if args.out or args.shard or args.ray is not None:
        return run_batch(args, queries, [line for _, line in problems], PROG)
    answered, carried = previous_answers(args.resume) if args.resume else (set(), [])
    loc = _localizer(args)
    source = None
    if args.viz and args.source:  # opened before any photo, so a bad --source fails first
        from .imagery import open_source

        source = open_source(args.source)
    elif args.viz and loc.store.pixels is None:
        raise ValueError("--viz needs view pixels: build the store with jzi-tiles build --thumbs PX, or pass --source")
    if answered:
        before = len(queries)
        queries = [q for q in queries if q.label not in answered]
        print(f"{PROG}: resuming: {before - len(queries)} photos already answered in {args.resume}", file=sys.stderr)
    outputs = [JsonLinesOutput(PROG, loc.backend.describe()) if args.json else TextOutput(PROG)]
    if args.geojson:
        outputs.append(GeoJsonOutput(args.geojson, carried, report=sys.stderr if args.json else sys.stdout))
    done: list[tuple[Query, object, float | None]] = []
    failures = 0
    first_photo = None
    pending: list[tuple[Query, np.ndarray]] = []

    def fail(label: str, line: str) -> None:
        nonlocal failures
        failures += 1
        for out in outputs:
            out.failure(label, line)

    def flush():
        results = loc.localize_batch([img for _, img in pending], beams=args.beams)
        for (q, _), r in zip(pending, results):
            err = float(distance_m([r.latitude, r.longitude], q.truth)) if q.truth else None
            done.append((q, r, err))
            for out in outputs:
                out.answer(q.label, r, err, q.truth)
        pending.clear()

    interrupted = True  # until the loop below finishes: a Ctrl-C or an error still closes every output
    try:
        for label, line in problems:
            fail(label, line)
        for q in queries:
            try:
                img = load_rgb(q.path, args.max_pixels)
            except ImageError as e:
                fail(q.label, str(e))
                continue
            if first_photo is None:
                first_photo = img
            pending.append((q, img))
            if len(pending) >= args.batch:
                flush()
        if pending:
            flush()
        interrupted = False
    finally:
        errors = np.array([e for _, _, e in done if e is not None])
        summary = recall_summary(errors) if len(errors) else None
        for out in outputs:
            out.close(summary, interrupted)
    if args.viz and done:
        from .viz import draw_zoom, save_rgb, view_images

        q, r, err = done[0]
        views = view_images(loc.region, r.path, store=loc.store, source=source)
        caption = f"{q.label}: answer {r.latitude:.6f}, {r.longitude:.6f}" + (
            f"; truth {q.truth[0]:.6f}, {q.truth[1]:.6f}; error {err:.1f} m" if err is not None else "")
        save_rgb(args.viz, draw_zoom(first_photo, views, loc.region, r.path, r.step_probs, q.truth, caption))
        if not args.json:
            print(f"zoom path drawn to {args.viz}")
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    images.QUIET_CODECS = True  # a damaged photo is one line, without libpng's or libjpeg's own
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the answers so far are kept (run again with --resume to go on)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        sys.stderr.close()
        return 0
    except (LocalizerError, TileStoreError, BundleError, BackendUnavailable, ValueError, OSError,
            ray_jobs.RayJobError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
