"""``jzi-bench throughput``: tile-store build rate and batched queries per second."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bench_workdir import Workdir


def suite_throughput(args, wd: Workdir) -> list[dict]:
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.geometry import Region
    from jzi.runtime.localizer import Localizer

    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        for precision in ("fp32", "int8"):
            bundle = wd.bundle(ckpt, precision)
            man = load_manifest(bundle, verify=False)
            s = int(man["image_size"])
            eng = open_backend(bundle, man, "ort-cpu", args.threads)
            views = np.random.default_rng(0).integers(0, 256, (args.build_batch, s, s, 3), dtype=np.uint8)
            eng.encode_views(views[:1])
            t0 = time.perf_counter()
            eng.encode_views(views)
            vps = args.build_batch / (time.perf_counter() - t0)
            n_views = Region.from_dict(man["region"]).total_views
            store = wd.random_store(wd.bundle(ckpt, "fp32"))
            loc = Localizer(bundle, store, backend="ort-cpu", threads=args.threads)
            photos = wd.photos(max(args.queries, 8))
            qps = {}
            for batch in (1, 8):
                imgs = photos[:batch]
                loc.localize_batch(imgs)
                t0 = time.perf_counter()
                reps = max(1, args.repeats // batch)
                for _ in range(reps):
                    loc.localize_batch(imgs)
                qps[f"batch_{batch}"] = batch * reps / (time.perf_counter() - t0)
            rows.append({"preset": preset, "precision": precision, "encode_views_per_s": vps,
                         "store_build_min_estimate": n_views / vps / 60, "store_views": n_views,
                         "queries_per_s": qps})
    return rows
