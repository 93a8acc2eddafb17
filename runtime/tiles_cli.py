"""``jzi-tiles``: build, inspect and verify tile stores.

    jzi-tiles build --engine BUNDLE --source SOURCE -o REGION.jzt [--dtype fp16|fp32] [--thumbs PX]
    jzi-tiles info REGION.jzt [--json]
    jzi-tiles verify REGION.jzt [--engine BUNDLE] [--json]

SOURCE is anything ``jzi.runtime.imagery.open_source`` reads: an XYZ tile folder or its
tiledwebmaps ``layout.yaml``, a GeoTIFF, or a dataset root with ``satellite/layout.yaml`` (the
synthetic world is written in these formats). An interrupted build resumes when run again.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .backends import BACKENDS, BackendUnavailable
from .bundle import BundleError, load_manifest
from .extras import install_hint, missing_extras
from .geometry import Region
from .imagery import upsampled_levels
from .tiles import TileStore, TileStoreError, build_store, verify_store

PROG = "jzi-tiles"


def _latlon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"{text!r} is not a latitude,longitude")
    return lat, lon


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Build, inspect and verify jzi tile stores.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="render and encode every view of a region into a tile store")
    b.add_argument("--engine", required=True, metavar="BUNDLE", help="model bundle made by jzi-export")
    b.add_argument("--source", required=True, help="imagery: XYZ folder / layout.yaml / GeoTIFF / dataset root")
    b.add_argument("-o", "--output", required=True, metavar="REGION.jzt", help="tile store directory to write")
    b.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="embedding precision on disk (fp16)")
    b.add_argument("--thumbs", type=int, default=0, metavar="PX",
                   help="also store PX x PX RGB thumbnails of every view, for jzi-run --viz (default: none)")
    b.add_argument("--batch", type=_positive_int, default=32, help="views per encoder call (32)")
    b.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS, help="inference backend (auto)")
    b.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for ONNX Runtime")
    b.add_argument("--center", type=_latlon, metavar="LAT,LON", help="region centre (default: the bundle's region)")
    b.add_argument("--size-m", type=float, help="region side in metres (default: the bundle's region)")
    b.add_argument("--force", action="store_true", help="replace an existing store / discard a mismatched partial build")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print what a tile store holds")
    i.add_argument("store")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("verify", help="check checksums, sizes and values of a tile store")
    v.add_argument("store")
    v.add_argument("--engine", metavar="BUNDLE", help="also check that this bundle's encoder made the store")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_build(args) -> int:
    missing = missing_extras("geo")  # every imagery format needs part of it: say so before any work
    if missing:
        print(install_hint("jzi-tiles build", missing), file=sys.stderr)
        return 1
    manifest = load_manifest(args.engine)
    region = Region.from_dict(manifest["region"])
    if args.center:
        region = replace(region, center_lat=args.center[0], center_lon=args.center[1])
    if args.size_m is not None:
        if not args.size_m > 0:
            raise TileStoreError(f"--size-m must be positive, got {args.size_m}")
        region = replace(region, size_m=float(args.size_m))
    if not 0 <= args.thumbs <= region.view_px:
        raise TileStoreError(f"--thumbs must be between 0 and the view size {region.view_px}")
    out = build_store(args.output, args.engine, args.source, backend=args.backend, threads=args.threads,
                      dtype={"fp16": "float16", "fp32": "float32"}[args.dtype], batch=args.batch,
                      thumb_px=args.thumbs, region=region, force=args.force, progress=not args.quiet,
                      warn=lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr))
    store = TileStore(out)
    print(f"wrote {out}: {store.total_views} views x {store.dim} {store.dtype}, "
          f"{store.region.steps} steps over {store.region.size_m / 1000:g} km")
    return 0


def cmd_info(args) -> int:
    info = TileStore(args.store).summary()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    r = info["region"]
    print(f"{info['path']}")
    print(f"  region     centre {r['center_lat']:.6f}, {r['center_lon']:.6f}; {r['size_m'] / 1000:g} km square")
    print(f"  zoom       {info['grid']}x{info['grid']} grid, {info['steps']} steps, final cell {info['final_cell_m']:.2f} m")
    print(f"  views      {info['total_views']} at {info['view_px']} px, embeddings {info['dim']} x {info['dtype']}")
    mpp = info.get("source_meters_per_pixel")
    upsampled = dict(upsampled_levels(Region.from_dict(r), mpp))
    for lvl in info["levels"]:
        blur = f", upsampled {upsampled[lvl['level']]:.1f}x" if lvl["level"] in upsampled else ""
        print(f"    level {lvl['level']}: {lvl['count']:>8} views of {lvl['size_m']:g} m "
              f"({lvl['meters_per_pixel']:.3f} m/px{blur}), rows {lvl['offset']}..{lvl['offset'] + lvl['count'] - 1}")
    if mpp:
        levels = ", ".join(str(k) for k in upsampled) or "none"
        print(f"  imagery    {mpp:.3f} m/px; levels upsampled from coarser imagery: {levels}")
    else:
        print("  imagery    resolution not recorded (a store built before jzi recorded it)")
    for role, f in info["files"].items():
        print(f"  {role:<10} {f['path']} {f['dtype']} {f['shape']} ({f['bytes'] / 1e6:.1f} MB)")
    print(f"  encoder    {info['encoder_id'][:16]} ({info['encoder_precision']}), source {info['source']}")
    return 0


def cmd_verify(args) -> int:
    report = verify_store(args.store)
    if args.engine:
        manifest = load_manifest(args.engine, verify=False)
        store = TileStore(args.store)
        report["encoder_matches"] = store.encoder_id == manifest["encoder_id"]
        if not report["encoder_matches"]:
            raise TileStoreError(f"{args.store}: built by encoder {store.encoder_id[:12]}, not by the encoder of "
                                 f"{args.engine} ({str(manifest['encoder_id'])[:12]})")
    print(json.dumps(report, indent=1) if args.json else f"{args.store}: OK ({report['views']} views, checksums match)")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"build": cmd_build, "info": cmd_info, "verify": cmd_verify}[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (TileStoreError, BundleError, BackendUnavailable, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
