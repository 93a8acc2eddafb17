"""Concurrent single queries on one shared Localizer vs the same queries one after another.

    python benchmarks/bench_threads.py --work DIR [--preset tiny|small] [--queries 96] [--reps 3]

Each repetition runs both contenders in separate fresh processes, alternating: ``serial`` (one
thread calls ``localize`` for every photo) and ``shared`` (8 threads share one Localizer, each
calling ``localize`` on its share of the photos; concurrent calls are batched). Prints queries per
second for each and the median ratio shared / serial. Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 8


def _child(mode: str, bundle: str, store: str, photos: str, threads: int) -> None:
    import threading

    import numpy as np

    from jzi.runtime.localizer import Localizer

    imgs = list(np.load(photos))
    loc = Localizer(bundle, store, backend="ort-cpu", threads=threads)
    loc.localize(imgs[0])  # warm-up: sessions, first blocks of the store
    batch_sizes = []
    t0 = time.perf_counter()
    if mode == "serial":
        for img in imgs:
            batch_sizes.append(loc.localize(img).timings["batch"])
    else:
        def work(part):
            for img in part:
                batch_sizes.append(loc.localize(img).timings["batch"])
        ts = [threading.Thread(target=work, args=(imgs[i::THREADS],)) for i in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    dt = time.perf_counter() - t0
    print(json.dumps({"qps": len(imgs) / dt, "mean_batch": float(np.mean(batch_sizes))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--queries", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, bundle, store, photos, threads = a.child
        _child(mode, bundle, store, photos, int(threads))
        return
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from runtime_fixtures import make_bundle, make_photos, make_store

    a.work.mkdir(parents=True, exist_ok=True)
    if a.preset != "tiny":
        raise SystemExit("only the tiny preset's fixtures are built here")
    bundle = make_bundle(a.work)
    store = make_store(a.work, bundle)
    photos = a.work / "bench_photos.npy"
    np.save(photos, np.stack(make_photos(a.work, a.queries, seed=21)))
    runs = {"serial": [], "shared": []}
    for rep in range(a.reps):
        for mode in ("serial", "shared") if rep % 2 == 0 else ("shared", "serial"):
            out = subprocess.run([sys.executable, __file__, "--work", str(a.work), "--child", mode, str(bundle),
                                  str(store), str(photos), str(a.threads)], capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    ratios = [sh["qps"] / se["qps"] for sh, se in zip(runs["shared"], runs["serial"])]
    print(json.dumps({"serial_qps": [r["qps"] for r in runs["serial"]], "shared_qps": [r["qps"] for r in runs["shared"]],
                      "shared_mean_batch": [r["mean_batch"] for r in runs["shared"]],
                      "median_ratio_shared_over_serial": statistics.median(ratios)}, indent=1))


if __name__ == "__main__":
    main()
