"""Tile-build throughput: one process vs ``--shard`` in 2 processes vs Ray (local), side by side.

    python benchmarks/bench_distributed.py [--repeats 2] [--out bench-out/distributed]

Each contender is the real ``jzi-tiles build`` command line in its own process(es), run in turn
(alternating, ``--repeats`` rounds) on the tiny random-weight bundle over the test GeoTIFF (the
default 4-step region: 4 369 views). While it runs, the harness polls the build's ``done/`` folder,
so each run gives:

    startup_s      command start -> first chunk marked done (process start, imports, bundle load,
                   Ray start and actor creation, and one chunk's work)
    steady_views_s views per second between the first and the last chunk marked done
    wall_s         the whole command (with the merge: checksums, index), and views/s over it

Also measured: the render cost of one 384 px view from the GeoTIFF (per view, one core), the
CPU-side cost a GPU encoder needs covered when planning a large build.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CHUNK_ROWS = 256


def build_cmd(bundle, tiff, out, *extra):
    return [sys.executable, "-m", "jzi.runtime.tiles_cli", "build", "--engine", str(bundle), "--source", str(tiff),
            "-o", str(out), "--chunk-rows", str(CHUNK_ROWS), "--quiet", *map(str, extra)]


def timed(commands: list[list[str]], out: Path, merge: list[str] | None = None, env=None) -> dict:
    """Run commands in parallel, poll the chunk markers, then an optional merge command."""
    done_dir = out.with_name(out.name + ".partial") / "done"
    seen: dict[str, float] = {}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in commands]
    while any(p.poll() is None for p in procs):
        if done_dir.is_dir():
            now = time.perf_counter() - t0
            for name in os.listdir(done_dir):
                seen.setdefault(name, now)
        time.sleep(0.05)
    for p in procs:
        if p.returncode:
            raise SystemExit(f"{commands[0][3:6]} failed: {p.stderr.read().decode()[-2000:]}")
    if merge:
        subprocess.run(merge, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    times = sorted(seen.values())
    return {"wall_s": wall, "startup_s": times[0] if times else None, "chunks_seen": len(times),
            "last_chunk_s": times[-1] if times else None, "first_to_last_s": times[-1] - times[0] if times else None}


def render_cost(tiff, n: int = 40) -> float:
    """Seconds per 384 px view rendered from the GeoTIFF (one process, one core)."""
    import numpy as np

    from jzi.runtime.geometry import Region
    from jzi.runtime.imagery import open_source
    from jzi.runtime.tiles import view_geometry

    src = open_source(tiff)
    region = Region.default()
    rows = np.linspace(0, region.total_views - 1, n).astype(np.int64)
    centres, sizes = view_geometry(region, rows)
    src.render_many(centres[:2], sizes[:2], 384)  # warm-up
    t = time.perf_counter()
    src.render_many(centres, sizes, 384)
    return (time.perf_counter() - t) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench-out/distributed")
    ap.add_argument("--only", nargs="+", choices=("single", "shards", "ray"), default=("single", "shards", "ray"),
                    help="contenders to run (default: all three)")
    args = ap.parse_args(argv)
    from runtime_fixtures import make_bundle, make_geotiff

    from jzi.runtime.geometry import Region

    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    bundle, tiff = make_bundle(work), make_geotiff(work)
    views = Region.default().total_views
    contenders = {
        "single process (ORT 2 threads)": lambda out: timed([build_cmd(bundle, tiff, out, "--threads", "2")], out),
        "2 shards (2 processes, 1 thread each) + merge": lambda out: timed(
            [build_cmd(bundle, tiff, out, "--threads", "1", "--shard", f"{i}/2") for i in range(2)], out,
            merge=[sys.executable, "-m", "jzi.runtime.tiles_cli", "merge", str(out)]),
        "Ray local, 2 CPUs (render tasks + 1 encoder actor, 1 thread)": lambda out: timed(
            [build_cmd(bundle, tiff, out, "--threads", "1", "--ray", "--local-cpus", "2", "--workers", "1")], out),
    }
    keys = dict(zip(("single", "shards", "ray"), contenders))
    contenders = {keys[k]: contenders[keys[k]] for k in ("single", "shards", "ray") if k in args.only}
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    stores = {}
    load = {"before": os.getloadavg()}
    for r in range(args.repeats):
        for i, (name, run) in enumerate(contenders.items()):
            out = work / f"c{i}.jzt"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
            res = run(out)
            res["views_per_s_wall"] = views / res["wall_s"]
            n_first = CHUNK_ROWS  # the first chunk is inside the startup figure
            res["steady_views_s"] = (views - n_first) / res["first_to_last_s"] if res["first_to_last_s"] else None
            results[name].append(res)
            stores[name] = (out / "embeddings.f16").read_bytes()
            print(f"round {r}: {name}: {json.dumps({k: round(v, 2) for k, v in res.items() if v is not None})}",
                  flush=True)
    load["after"] = os.getloadavg()
    identical = len(set(stores.values())) == 1
    summary = {name: {k: statistics.median(x[k] for x in runs) for k in ("wall_s", "startup_s", "steady_views_s",
                                                                         "views_per_s_wall")}
               for name, runs in results.items()}
    base = summary.get("single process (ORT 2 threads)")
    for s in summary.values():
        s["wall_ratio_vs_single"] = s["wall_s"] / base["wall_s"] if base else None
    report = {"views": views, "chunk_rows": CHUNK_ROWS, "repeats": args.repeats, "identical_embeddings": identical,
              "loadavg": load, "render_s_per_384px_view": render_cost(tiff), "summary": summary, "runs": results}
    (work / f"results-{'-'.join(args.only)}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
