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
    elif kind in ANN_METHODS:  # n d threads
        result = ann_figures(kind, int(params[0]), int(params[1]), int(params[2]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ---- approximate retrieval (FAISS), the index a Sample4Geo-style deployment would search ----------------
ANN_METHODS = ("hnsw", "ivfpq")
ANN_QUERIES = 200
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
PQ_BYTES, IVF_NPROBE = 64, 16  # 64 sub-quantisers x 8 bits per cell; cells probed per query
QUERY_NOISE = 0.03  # per-dimension noise on a database row: its true neighbour is clear, not trivial


def ann_queries(db: np.ndarray, n: int, seed: int = 7) -> np.ndarray:
    """Queries near known database rows (a random query has no meaningful neighbour in a random database)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(db), size=n, replace=False)
    q = db[rows] + QUERY_NOISE * rng.standard_normal((n, db.shape[1]), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def ann_index(method: str, d: int, n: int):
    import faiss

    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    nlist = int(2 ** round(np.log2(np.sqrt(n))))  # sqrt(n) inverted lists (the low end of the usual range)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = IVF_NPROBE
    return index


def ann_figures(method: str, n: int, d: int, threads: int) -> dict:
    """Build ``method`` over n random unit embeddings; build time, index bytes, latency and recall@1
    against exhaustive search (:class:`FlatIndex`) for queries near database rows."""
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (pip install jzi[bench])"}
    from .retrieval import FlatIndex, random_database

    faiss.omp_set_num_threads(threads)
    db, _ = random_database(n, d)
    queries = ann_queries(db, ANN_QUERIES)
    truth = FlatIndex(db).search(queries)[0][:, 0]
    index = ann_index(method, d, n)
    t0 = time.perf_counter()
    if not index.is_trained:
        # 39 points per centroid is faiss's minimum; PQ's 256 codes per sub-quantiser need 10k
        train = db[np.random.default_rng(3).choice(n, size=min(n, max(40 * index.nlist, 256 * 40)), replace=False)]
        index.train(train)
    index.add(db)
    build_s = time.perf_counter() - t0
    found = index.search(queries, 1)[1][:, 0]
    ms = []
    for q in queries[:50]:  # one query at a time, as a localizer serves them
        t0 = time.perf_counter()
        index.search(q[None], 1)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"method": method, "cells": n, "build_s": build_s, "index_bytes": int(faiss.serialize_index(index).size),
            "search_ms": float(np.median(ms)), "recall@1": float((found == truth).mean()),
            "queries": ANN_QUERIES, "params": ({"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                                                "efSearch": HNSW_EF_SEARCH} if method == "hnsw" else
                                               {"nlist": int(index.nlist), "pq_bytes": PQ_BYTES, "nprobe": IVF_NPROBE})}


def retrieval_rows(cells: int, dim: int, threads: int, methods=("flat",) + ANN_METHODS) -> dict:
    """Each retrieval method over ``cells`` random embeddings, each in a fresh process (own peak memory)."""
    need = cells * dim * 4  # every method builds from the fp32 database
    free = _available_memory_bytes()
    out = {}
    for method in methods:
        if need > 0.75 * free:
            out[method] = {"skipped": f"building needs the fp32 database of {cells:,} cells x {dim}: "
                                      f"{need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB available"}
        elif method == "flat":
            out[method] = _worker("flat", cells, dim)
        else:
            out[method] = _worker(method, cells, dim, threads)
    return out


def suite_retrieval(args, wd: Workdir) -> list[dict]:
    """Flat exhaustive search, HNSW and IVF-PQ over the finest cells of the scale suite's regions (random
    embeddings of the preset's width; no bundles needed)."""
    from .config import get_preset

    dim = get_preset(args.presets[-1]).width
    rows = []
    for steps in args.ann_steps or SCALE_STEPS:
        wd.log(f"retrieval: {CELL_M * 4**steps / 1000:g} km, {16**steps:,} cells")
        rows.append({"steps": steps, "region_km": CELL_M * 4**steps / 1000, "cells": 16**steps, "dim": dim,
                     **retrieval_rows(16**steps, dim, args.threads)})
    return rows


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
        retrieval = retrieval_rows(cells, dim, args.threads)
        flat = retrieval.pop("flat")
        store_bytes = sum(f.stat().st_size for f in store.iterdir())
        row = {"preset": preset, "steps": steps, "region_km": region_km, "jzi_views": int((16**steps - 1) // 15),
               "jzi_store_mb": store_bytes / 2**20, "jzi": jzi, "flat_cells": cells, "flat": flat, **retrieval}
        if "total_ms" in jzi and "search_ms" in flat:
            # flat retrieval encodes the same query (the same encoder), then searches
            row["flat_query_ms"] = jzi["encoder_ms"] + flat["search_ms"]
        rows.append(row)
    return rows
