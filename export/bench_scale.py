"""``jzi-bench scale``: latency and peak memory against region size (4/5/6 steps at 39 m cells) next to flat retrieval."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:  # passed on as it comes: a large build reports its progress
        sys.stderr.write(line)
        said.append(line.strip())
    out = proc.stdout.read()
    if proc.wait() != 0:
        return {"error": ([s for s in said if s] or ["failed"])[-1]}
    return json.loads(out.strip().splitlines()[-1])


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
    elif kind in ANN_METHODS:  # n d threads [state budget_s]
        result = ann_figures(kind, int(params[0]), int(params[1]), int(params[2]),
                             *([params[3], float(params[4])] if len(params) > 3 else []))
    else:
        raise SystemExit(f"unknown worker {kind}")
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result))


# ---- approximate retrieval (FAISS), the index a Sample4Geo-style deployment would search ----------------
ANN_METHODS = ("hnsw", "ivfpq")
ANN_QUERIES = 200
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
PQ_BYTES, IVF_NPROBE = 64, 16  # 64 sub-quantisers x 8 bits per cell; cells probed per query
QUERY_NOISE = 0.03  # per-dimension noise on a database row: its true neighbour is clear, not trivial
# search-time settings also measured on the built index (recall bought back at query time)
SEARCH_SWEEP = {"hnsw": ("efSearch", (HNSW_EF_SEARCH, 256)), "ivfpq": ("nprobe", (IVF_NPROBE, 64, 256))}


def ann_nlist(n: int) -> int:
    return int(2 ** round(np.log2(np.sqrt(n))))  # sqrt(n) inverted lists (the low end of the usual range)


def ann_pq_bytes(d: int) -> int:
    return math.gcd(PQ_BYTES, d)  # sub-quantisers must divide the width (64 for 768 and 384, 32 for 96)


def ann_train_rows(n: int) -> int:
    # 39 points per centroid is faiss's minimum; PQ's 256 codes per sub-quantiser need 10k
    return min(n, max(40 * ann_nlist(n), 256 * 40))


def ann_memory_bytes(method: str, n: int, d: int) -> tuple[int, str]:
    """What building ``method`` over n cells holds in memory (the index, the training sample, one block of the
    database), and the arithmetic, for the suite to say why a size does not fit."""
    from .retrieval import RANDOM_BLOCK

    block = min(n, RANDOM_BLOCK) * d * 4
    if method == "flat":
        return n * d * 4, f"{n:,} x {d} fp32"
    if method == "hnsw":  # every vector in fp32 plus 2M level-0 links of 4 bytes each
        per = 4 * d + 2 * HNSW_M * 4
        return n * per + block, f"{n:,} x ({d} x 4 + 2 x {HNSW_M} x 4) B"
    nlist = ann_nlist(n)  # codes and ids per cell, the training sample, the precomputed PQ tables
    m = ann_pq_bytes(d)
    sample, tables = ann_train_rows(n) * d * 4, nlist * m * 256 * 4
    return (n * (m + 8) + sample + tables + block,
            f"{n:,} x ({m} + 8) B + {ann_train_rows(n):,} training rows + {nlist} x {m} x 256 x 4 B")


def ann_queries(base: np.ndarray, seed: int = 7) -> np.ndarray:
    """Queries near known database rows (a random query has no meaningful neighbour in a random database)."""
    rng = np.random.default_rng(seed)
    q = base + QUERY_NOISE * rng.standard_normal(base.shape, dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def database_rows(n: int, d: int, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the random database of n cells, making only the blocks that hold them."""
    from .retrieval import RANDOM_BLOCK, random_block

    out = np.empty((len(rows), d), dtype=np.float32)
    blocks = rows // RANDOM_BLOCK
    for b in np.unique(blocks):
        mine = blocks == b
        out[mine] = random_block(n, d, int(b))[rows[mine] - b * RANDOM_BLOCK]
    return out


def ann_index(method: str, d: int, n: int):
    import faiss

    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, ann_nlist(n), ann_pq_bytes(d), 8, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = IVF_NPROBE
    return index


def _set_search(index, method: str, value: int) -> None:
    if method == "hnsw":
        index.hnsw.efSearch = value
    else:
        index.nprobe = value


def _search_figures(index, queries: np.ndarray, truth: np.ndarray) -> dict:
    found = index.search(queries, 1)[1][:, 0]
    ms = []
    for q in queries[:50]:  # one query at a time, as a localizer serves them
        t0 = time.perf_counter()
        index.search(q[None], 1)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"search_ms": float(np.median(ms)), "recall@1": float((found == truth).mean())}


def _index_bytes(index) -> int:
    import faiss

    with tempfile.TemporaryDirectory() as tmp:  # a file, not serialize_index: no second copy in memory
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def add_blockwise(index, n: int, d: int, queries: np.ndarray, found: tuple[np.ndarray, np.ndarray],
                  start: int = 0, deadline: float = float("inf"), log=None) -> tuple[int, dict]:
    """Make the random database of n cells block by block from block ``start``, add each block to ``index``
    and search it exhaustively for ``queries``, keeping each query's best (row, score) so far in ``found``
    (the ground truth once every block is in). Stops after the block that passes ``deadline``
    (``time.perf_counter()``), or after the first; returns the next block to add and the seconds spent
    making rows, adding and searching."""
    from .retrieval import RANDOM_BLOCK, FlatIndex, random_block, random_blocks

    truth, best = found
    times = {"make_s": 0.0, "add_s": 0.0, "truth_s": 0.0}
    blocks = random_blocks(n)
    b = start
    while b < blocks and (b == start or time.perf_counter() < deadline):  # at least one block a sitting
        if log and b > start and b % 16 == 0:  # large sizes run for tens of minutes: say where they are
            log(f"{b}/{blocks} blocks added")
        t0 = time.perf_counter()
        block = random_block(n, d, b)
        t1 = time.perf_counter()
        index.add(block)
        t2 = time.perf_counter()
        i, s = FlatIndex(block).search(queries)
        better = s[:, 0] > best
        truth[better], best[better] = i[better, 0] + b * RANDOM_BLOCK, s[better, 0]
        t3 = time.perf_counter()
        for key, dt in (("make_s", t1 - t0), ("add_s", t2 - t1), ("truth_s", t3 - t2)):
            times[key] += dt
        b += 1
    return b, times


class AnnBuild:
    """A FAISS build over the random database that can stop and go on in a later process (``state``): the
    index, the queries and the ground truth so far, and the seconds spent, saved after each sitting. On a
    shared machine a large build then runs as several short sittings; its build time is their sum."""

    ARRAYS = ("queries", "truth", "best")

    def __init__(self, method: str, n: int, d: int, state: str | None = None):
        self.method, self.n, self.d = method, n, d
        self.state = Path(state) if state else None
        self.progress = {"method": method, "cells": n, "dim": d, "next_block": 0, "sittings": 0, "train_s": 0.0,
                         "make_s": 0.0, "add_s": 0.0, "truth_s": 0.0, "save_load_s": 0.0, "peak_rss_mb": 0.0}

    def start(self) -> None:
        """A fresh build: the queries, the training sample (one pass over the blocks that hold them), training."""
        self.index = ann_index(self.method, self.d, self.n)
        rng = np.random.default_rng(7)
        query_rows = rng.choice(self.n, size=min(self.n, ANN_QUERIES), replace=False)
        train_rows = (np.sort(rng.choice(self.n, size=ann_train_rows(self.n), replace=False))
                      if not self.index.is_trained else np.zeros(0, dtype=np.int64))
        t0 = time.perf_counter()
        picked = database_rows(self.n, self.d, np.concatenate([query_rows, train_rows]))
        t1 = time.perf_counter()
        self.queries = ann_queries(picked[:len(query_rows)])
        if len(train_rows):
            self.index.train(picked[len(query_rows):])
        self.progress["make_s"] += t1 - t0
        self.progress["train_s"] = time.perf_counter() - t1
        self.truth = np.zeros(len(self.queries), dtype=np.int64)
        self.best = np.full(len(self.queries), -np.inf, dtype=np.float32)

    def resume(self) -> bool:
        """Load a saved build of the same method and size; False when there is none."""
        import faiss

        saved = self.state / "progress.json" if self.state else None
        if saved is None or not saved.exists():
            return False
        progress = json.loads(saved.read_text())
        if (progress.get("method"), progress.get("cells"), progress.get("dim")) != (self.method, self.n, self.d):
            raise SystemExit(f"jzi-bench: error: {self.state} holds the {progress.get('method')} build of "
                             f"{progress.get('cells')} x {progress.get('dim')}, "
                             f"not of {self.method}, {self.n} x {self.d}")
        t0 = time.perf_counter()
        self.index = faiss.read_index(str(self.state / progress["index"]))
        for name in self.ARRAYS:
            setattr(self, name, np.load(self.state / progress[name]))
        self.progress = progress
        self.progress["save_load_s"] += time.perf_counter() - t0
        return True

    def save(self) -> None:
        """The files are named by the next block and written first; progress.json, which names them, is
        replaced last, so a sitting killed at any moment leaves a whole state to go on from."""
        import faiss

        t0 = time.perf_counter()
        self.state.mkdir(parents=True, exist_ok=True)
        old = set(self.state.iterdir())
        tag = f"{self.progress['next_block']:06d}"
        self.progress["index"] = f"index-{tag}.faiss"
        faiss.write_index(self.index, str(self.state / self.progress["index"]))
        for name in self.ARRAYS:
            self.progress[name] = f"{name}-{tag}.npy"
            with open(self.state / self.progress[name], "wb") as f:
                np.save(f, getattr(self, name))
        self.progress["save_load_s"] += time.perf_counter() - t0
        tmp = self.state / "progress.json.tmp"
        tmp.write_text(json.dumps(self.progress))
        os.replace(tmp, self.state / "progress.json")
        keep = {self.state / self.progress[k] for k in ("index",) + self.ARRAYS} | {self.state / "progress.json"}
        for path in old - keep:
            path.unlink()


def ann_figures(method: str, n: int, d: int, threads: int, state: str | None = None,
                budget_s: float = float("inf")) -> dict:
    """Build ``method`` over n random unit embeddings; build time, index bytes, latency and recall@1 against
    exhaustive search for queries near database rows.

    The database is never held whole (at 160 km it is 48 GiB): the index is trained on a uniform sample of its
    rows, then the database is made block by block, each block added to the index and searched exhaustively
    for the queries (the ground truth), so memory is the index plus one block at any size. With ``state`` the
    build stops once ``budget_s`` seconds have passed, saves itself there and reports its progress; the same
    call goes on from there."""
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (pip install jzi[bench])"}
    from .retrieval import random_blocks

    faiss.omp_set_num_threads(threads)
    deadline = time.perf_counter() + budget_s
    build = AnnBuild(method, n, d, state)
    if not build.resume():
        build.start()
    p = build.progress
    start = p["next_block"]
    p["next_block"], times = add_blockwise(
        build.index, n, d, build.queries, (build.truth, build.best), start=start, deadline=deadline,
        log=lambda msg: print(f"{method}: {msg}", file=sys.stderr, flush=True))
    for key, dt in times.items():
        p[key] += dt
    if p["next_block"] > start:  # (a finished build's state only re-measures its search)
        p["sittings"] += 1
        p["peak_rss_mb"] = max(p["peak_rss_mb"], peak_rss_mb())
        if state:
            build.save()  # a finished build is kept too: the same call then re-measures its search
    blocks = random_blocks(n)
    if p["next_block"] < blocks:
        return {"method": method, "cells": n, "in_progress": f"{p['next_block']}/{blocks} blocks added in "
                f"{p['sittings']} sitting(s); the same command goes on from {state}", "progress": p}
    name, values = SEARCH_SWEEP[method]
    sweep = []
    for v in values:
        if method == "ivfpq" and v > build.index.nlist:
            continue  # probing more lists than exist is the same search
        _set_search(build.index, method, v)
        sweep.append({name: v, **_search_figures(build.index, build.queries, build.truth)})
    _set_search(build.index, method, values[0])
    params = ({"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH} if method == "hnsw"
              else {"nlist": int(build.index.nlist), "pq_bytes": int(build.index.pq.M), "nprobe": IVF_NPROBE})
    index_bytes = (build.state / p["index"]).stat().st_size if state else _index_bytes(build.index)
    return {"method": method, "cells": n, "threads": threads, "build_s": p["train_s"] + p["add_s"],
            "train_s": p["train_s"], "add_s": p["add_s"], "index_bytes": index_bytes, **sweep[0],
            "sweep": sweep, "queries": len(build.queries), "params": params,
            # outside the build: making the random rows, the exhaustive ground truth (all queries at once), and
            # saving/loading between sittings
            "make_rows_s": p["make_s"], "exhaustive_truth_s": p["truth_s"], "sittings": p["sittings"],
            "save_load_s": p["save_load_s"], "peak_rss_mb": max(p["peak_rss_mb"], peak_rss_mb())}


def retrieval_rows(cells: int, dim: int, threads: int, methods=("flat",) + ANN_METHODS, state: str | None = None,
                   budget_min: float | None = None) -> dict:
    """Each retrieval method over ``cells`` random embeddings, each in a fresh process (own peak memory).
    With ``state``, each FAISS build keeps its progress in a folder there and stops after ``budget_min``."""
    free = _available_memory_bytes()
    out = {}
    for method in methods:
        need, how = ann_memory_bytes(method, cells, dim)
        if need > 0.75 * free:
            out[method] = {"skipped": f"needs {need / 2**30:.1f} GiB in memory ({how}); "
                                      f"{free / 2**30:.1f} GiB available"}
        elif method == "flat":
            out[method] = _worker("flat", cells, dim)
        elif state:
            out[method] = _worker(method, cells, dim, threads, Path(state) / f"{method}-{cells}-{dim}",
                                  60 * (budget_min or float("inf")))
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
                     **retrieval_rows(16**steps, dim, args.threads, state=args.ann_state,
                                      budget_min=args.ann_budget)})
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
        retrieval = retrieval_rows(cells, dim, args.threads, state=args.ann_state, budget_min=args.ann_budget)
        flat = retrieval.pop("flat")
        store_bytes = sum(f.stat().st_size for f in store.iterdir())
        row = {"preset": preset, "steps": steps, "region_km": region_km, "jzi_views": int((16**steps - 1) // 15),
               "jzi_store_mb": store_bytes / 2**20, "jzi": jzi, "flat_cells": cells, "flat": flat, **retrieval}
        if "total_ms" in jzi and "search_ms" in flat:
            # flat retrieval encodes the same query (the same encoder), then searches
            row["flat_query_ms"] = jzi["encoder_ms"] + flat["search_ms"]
        rows.append(row)
    return rows
