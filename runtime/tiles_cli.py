"""``jzi-tiles``: build, inspect and verify tile stores.

    jzi-tiles build --engine BUNDLE --source SOURCE -o REGION.jzt [--dtype fp16|fp32] [--thumbs PX]
                    [--shard I/N | --ray [ADDRESS]]
    jzi-tiles merge REGION.jzt
    jzi-tiles info REGION.jzt [--json]
    jzi-tiles verify REGION.jzt [--engine BUNDLE] [--json]
    jzi-tiles upgrade REGION.jzt       add block checksums to a store written before format_version 2

SOURCE is anything ``jzi.runtime.imagery.open_source`` reads: an XYZ tile folder or its
tiledwebmaps ``layout.yaml``, a GeoTIFF, or a dataset root with ``satellite/layout.yaml`` (the
synthetic world is written in these formats). An interrupted build resumes when run again.

Many machines: ``--shard I/N`` (or the RANK/WORLD_SIZE, Slurm array or Kubernetes indexed-job
environment) builds one N-th of the chunks into a shared folder, then ``jzi-tiles merge`` (or a
build without --shard) checks every chunk and writes the index. ``--ray`` runs the whole build on
a Ray cluster (``pip install 'jzi[ray]'``): a private local one, or ADDRESS (``auto``, ``ray://...``).
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
from . import ray_jobs
from .imagery import upsampled_levels
from .ray_jobs import RayJobError
from .shards import resolve_shard
from .tiles import CHUNK_ROWS, TileStore, TileStoreError, build_store, finalize_store, upgrade_store, verify_store

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
    b.add_argument("--chunk-rows", type=_positive_int, default=CHUNK_ROWS,
                   help=f"views per chunk: the unit of work, resumption and block checksums ({CHUNK_ROWS})")
    b.add_argument("--shard", metavar="I/N", help="build only shard I of N (default: from RANK/WORLD_SIZE, "
                   "SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX/WORLD_SIZE when set); merge afterwards")
    ray_jobs.add_arguments(b)

    m = sub.add_parser("merge", help="finish a sharded build: check every chunk, write the index with checksums")
    m.add_argument("store", metavar="REGION.jzt")

    i = sub.add_parser("info", help="print what a tile store holds")
    i.add_argument("store")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("verify", help="check checksums, sizes and values of a tile store")
    v.add_argument("store")
    v.add_argument("--engine", metavar="BUNDLE", help="also check that this bundle's encoder made the store")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    u = sub.add_parser("upgrade", help="check an older store and add the per-block checksums this jzi reads")
    u.add_argument("store")
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
    settings = dict(backend=args.backend, threads=args.threads, dtype={"fp16": "float16", "fp32": "float32"}[args.dtype],
                    batch=args.batch, chunk_rows=args.chunk_rows, thumb_px=args.thumbs, region=region,
                    force=args.force, progress=not args.quiet)
    if args.ray is not None:
        if args.shard:
            raise ValueError("--shard and --ray do not mix: Ray splits the work itself")
        out = ray_jobs.build_store_ray(args.output, args.engine, args.source, ray_jobs.options_from_args(args),
                                       **settings)
    else:
        shard = resolve_shard(args.shard)
        out = build_store(args.output, args.engine, args.source, shard=shard,
                          warn=lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr), **settings)
        if out is None:
            print(f"shard {shard[0]}/{shard[1]} of {args.output} done; when every shard is: "
                  f"{PROG} merge {args.output}")
            return 0
    _print_built(out)
    return 0


def cmd_merge(args) -> int:
    _print_built(finalize_store(args.store))
    return 0


def _print_built(out) -> None:
    store = TileStore(out)
    print(f"wrote {out}: {store.total_views} views x {store.dim} {store.dtype}, "
          f"{store.region.steps} steps over {store.region.size_m / 1000:g} km")


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


def cmd_upgrade(args) -> int:
    report = upgrade_store(args.store)
    if report["upgraded"]:
        print(f"{args.store}: checked and upgraded to format_version {report['format_version']}")
    else:
        print(f"{args.store}: already format_version {report['format_version']}, nothing to do")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"build": cmd_build, "merge": cmd_merge, "info": cmd_info, "verify": cmd_verify,
                "upgrade": cmd_upgrade}[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (TileStoreError, BundleError, BackendUnavailable, ValueError, OSError, RayJobError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
