"""``jzi-run``: localize street photos.

    jzi-run --engine BUNDLE --tiles REGION.jzt query.jpg [more.jpg | folder/ | list.csv]
            [--beams k] [--json] [--geojson out.geojson] [--viz out.png [--source IMAGERY]]

Prints "photo  latitude, longitude" per photo. A CSV lists photos in a ``path`` column (relative to
the CSV) or in the authors' dataset format (``image_id`` with ``streetview/images/{id}_undistorted.jpg``
beside the CSV or one folder up); with ``latitude``/``longitude`` columns each line also gets its
error in metres and a summary of R@40/50/100m follows. A photo that cannot be read is one line on
stderr and the rest go on; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import BACKENDS, BackendUnavailable
from .bundle import BundleError
from .geometry import distance_m
from .images import MAX_PIXELS, ImageError, list_images, load_rgb
from .localizer import Localizer, LocalizerError
from .tiles import TileStoreError

PROG = "jzi-run"
RECALL_M = (40, 50, 100)


@dataclass
class Query:
    label: str
    path: Path
    truth: tuple[float, float] | None = None


def _csv_queries(csv_path: Path, problems: list[str]) -> list[Query]:
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
            problems.append(f"{csv_path}:{n}: empty {key}")
            continue
        truth = None
        if lat_key and lon_key:
            try:
                truth = (float(row[lat_key]), float(row[lon_key]))
                if not (-90 <= truth[0] <= 90 and -180 <= truth[1] <= 180):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"{csv_path}:{n}: bad latitude/longitude {row.get(lat_key)!r}, {row.get(lon_key)!r}")
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


def gather(inputs: list[str], problems: list[str]) -> list[Query]:
    queries = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                problems.append(f"{p}: no images in this folder")
            queries += [Query(str(f), f) for f in found]
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                problems.append(f"{p}: no such file")
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
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS, help="inference backend (auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--geojson", metavar="OUT", help="write the answers (and truths) as a GeoJSON FeatureCollection")
    p.add_argument("--viz", metavar="OUT.png", help="draw the zoom path of the first photo")
    p.add_argument("--source", metavar="IMAGERY", help="imagery to draw the --viz views from, at full size "
                   "(sharper than the store's thumbnails; needed when it has none)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"refuse larger photos ({MAX_PIXELS})")
    p.add_argument("--no-verify", action="store_true", help="skip the bundle checksum check at start-up")
    return p


def _feature(q: Query, r, err) -> dict:
    props = {"image": q.label, "path": r.path, "confidence": r.confidence, "step_probs": r.step_probs}
    if q.truth is not None:
        props.update(truth_latitude=q.truth[0], truth_longitude=q.truth[1], error_m=err)
    if r.candidates:
        props["candidates"] = [{"latitude": c.latitude, "longitude": c.longitude, "path": c.path,
                                "probability": c.probability} for c in r.candidates]
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [r.longitude, r.latitude]},
            "properties": props}


def _write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run(args) -> int:
    if args.beams < 1 or args.batch < 1:
        raise ValueError("--beams and --batch must be at least 1")
    if args.max_pixels < 1:
        raise ValueError("--max-pixels must be positive")
    problems: list[str] = []
    queries = gather(args.inputs, problems)
    if not queries and not problems:
        raise ValueError("no photos given (the CSV lists none)")
    loc = Localizer(args.engine, args.tiles, backend=args.backend, threads=args.threads,
                    verify_bundle=not args.no_verify)
    source = None
    if args.viz and args.source:  # opened before any photo, so a bad --source fails first
        from .imagery import open_source

        source = open_source(args.source)
    elif args.viz and loc.store.pixels is None:
        raise ValueError("--viz needs view pixels: build the store with jzi-tiles build --thumbs PX, or pass --source")
    for line in problems:
        print(f"{PROG}: {line}", file=sys.stderr)
    done: list[tuple[Query, object, float | None]] = []
    first_photo = None
    pending: list[tuple[Query, np.ndarray]] = []

    def flush():
        results = loc.localize_batch([img for _, img in pending], beams=args.beams)
        for (q, _), r in zip(pending, results):
            err = float(distance_m([r.latitude, r.longitude], q.truth)) if q.truth else None
            done.append((q, r, err))
            if not args.json:
                line = f"{q.label}  {r.latitude:.6f}, {r.longitude:.6f}"
                line += f"  error {err:.1f} m" if err is not None else ""
                line += f"  confidence {r.confidence:.3g}"
                if r.candidates:  # the answer first, then the runners-up
                    line += "  top-{}: {}".format(len(r.candidates), "; ".join(
                        f"{c.latitude:.6f}, {c.longitude:.6f} ({c.probability:.3f})" for c in r.candidates))
                print(line, flush=True)
        pending.clear()

    failures = len(problems)
    for q in queries:
        try:
            img = load_rgb(q.path, args.max_pixels)
        except ImageError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            failures += 1
            continue
        if first_photo is None:
            first_photo = img
        pending.append((q, img))
        if len(pending) >= args.batch:
            flush()
    if pending:
        flush()

    errors = np.array([e for _, _, e in done if e is not None])
    summary = recall_summary(errors) if len(errors) else None
    if args.json:
        print(json.dumps({"backend": loc.backend.describe(), "results": [
            {"image": q.label, **r.to_dict(), **({"error_m": e} if e is not None else {})} for q, r, e in done],
            "summary": summary, "failed": failures}, indent=1))
    elif summary:
        print("{} photos with truth: ".format(summary["n"]) + "  ".join(
            f"R@{m}m {100 * summary[f'R@{m}m']:.1f}%" for m in RECALL_M)
            + f"  median error {summary['median_error_m']:.1f} m")
    if args.geojson:
        _write_json(args.geojson, {"type": "FeatureCollection", "features": [_feature(q, r, e) for q, r, e in done]})
        print(f"wrote {len(done)} answers to {args.geojson}", file=sys.stderr if args.json else sys.stdout)
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
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        sys.stderr.close()
        return 0
    except (LocalizerError, TileStoreError, BundleError, BackendUnavailable, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
