"""``jzi-bench scale``: latency and peak memory against region size (4/5/6 steps at 39 m cells) next to flat retrieval."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from .bench_harness import peak_rss_mb
from .bench_workdir import CELL_M, Workdir

SCALE_STEPS = (4, 5, 6)


def _available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(kind: str, *params) -> dict:
    """Run in a fresh process so that ru_maxrss is this configuration's peak alone."""
    cmd = [sys.executable, "-m", "jzi.export.bench", "--worker", kind, *map(str, params)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_main(kind: str, params: list[str]) -> None:
    if kind == "jzi":  # bundle store photo n threads
        from jzi.runtime.localizer import Localizer
        from jzi.runtime.tiles import TileStore

        bundle, store, photo, n, threads = params[0], params[1], params[2], int(params[3]), int(params[4])
        t0 = time.perf_counter()
        st = TileStore(store)
        open_ms = (time.perf_counter() - t0) * 1e3
        loc = Localizer(bundle, st, backend="ort-cpu", threads=threads)
        loc.localize(photo)
        res = [loc.localize(photo).timings for _ in range(n)]
        result = {"open_store_ms": open_ms, "total_ms": float(np.median([r["total_ms"] for r in res])),
                  "encoder_ms": float(np.median([r["encoder_ms"] for r in res])),
                  "zoom_ms": float(np.median([r["zoom_ms"] for r in res]))}
    elif kind == "flat":  # n d
        from .retrieval import FlatIndex, random_database

        n, d = int(params[0]), int(params[1])
        db, build_s = random_database(n, d)
        index = FlatIndex(db)
        q = np.random.default_rng(5).standard_normal((1, d)).astype(np.float32)
        index.search(q)
        ms = []
        for _ in range(10):
            t0 = time.perf_counter()
            index.search(q)
            ms.append((time.perf_counter() - t0) * 1e3)
        result = {"build_s": build_s, "search_ms": float(np.median(ms)), "db_bytes": int(db.nbytes)}
    else:
        raise SystemExit(f"unknown worker {kind}")
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def suite_scale(args, wd: Workdir) -> list[dict]:
    """Fixed 39 m terminal cells, growing regions: jzi (tile store) vs flat retrieval (one embedding per cell)."""
    preset = args.presets[-1]
    photo = wd.photos(1)[0]
    rows = []
    for steps in SCALE_STEPS:
        region_km = CELL_M * 4**steps / 1000
        ckpt = wd.checkpoint(preset, steps)
        bundle = wd.bundle(ckpt, "fp32")
        store = wd.random_store(bundle)
        wd.log(f"scale: {region_km:g} km, {steps} steps")
        jzi = _worker("jzi", bundle, store, photo, args.repeats, args.threads)
        from jzi.runtime.bundle import load_manifest

        dim = int(load_manifest(bundle, verify=False)["width"])
        cells = 16**steps
        need = cells * dim * 4
        if need > 0.75 * _available_memory_bytes():
            flat = {"skipped": f"a flat fp32 database of {cells:,} cells x {dim} needs {need / 2**30:.1f} GiB; "
                               f"{_available_memory_bytes() / 2**30:.1f} GiB available"}
        else:
            flat = _worker("flat", cells, dim)
        store_bytes = sum(f.stat().st_size for f in store.iterdir())
        row = {"preset": preset, "steps": steps, "region_km": region_km, "jzi_views": int((16**steps - 1) // 15),
               "jzi_store_mb": store_bytes / 2**20, "jzi": jzi, "flat_cells": cells, "flat": flat}
        if "total_ms" in jzi and "search_ms" in flat:
            # flat retrieval encodes the same query (the same encoder), then searches
            row["flat_query_ms"] = jzi["encoder_ms"] + flat["search_ms"]
        rows.append(row)
    return rows
