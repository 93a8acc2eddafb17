"""``jzi-bench``: latency suites, side by side with the baselines jzi is meant to beat.

    jzi-bench latency    per-stage latency and p50/p90/p99 per preset and backend (ORT fp32/int8, PyTorch eager)
    jzi-bench reference  jzi against the authors' pipeline (render + encode every view, no KV cache), same queries
    jzi-bench kvcache    the decoder loop with the KV cache against full recompute, at 4 and 8 steps
    jzi-bench scale      latency and peak memory against region size (4/5/6 steps at 39 m cells) next to flat retrieval
    jzi-bench throughput tile-store build rate and batched queries per second
    jzi-bench accuracy   synthetic test split: PyTorch vs runtime (fp32/int8, fp16 store, beam 4) vs InfoNCE retrieval

Each suite prints a table; ``--json`` writes every figure with the machine and versions, ``--plots``
draws PNGs. Models without ``--checkpoint`` have random weights (fine for speed and memory, say nothing
about accuracy); the accuracy figures come from ``jzi-eval`` and ``jzi-run`` on a trained model.
Artifacts (checkpoints, bundles, stores, photos) are cached in ``--workdir`` between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PRESET_CHOICES = ("tiny", "small", "official")
SCALE_STEPS = (4, 5, 6)
CELL_M = 39.0625  # the terminal cell of the authors' 10 km / 4-step region


# ---- artifacts ---------------------------------------------------------------------------------------
class Workdir:
    """Random-weight checkpoints, bundles, stores and photos, made once and reused."""

    def __init__(self, root, threads: int, log=print):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.log = log

    def checkpoint(self, preset: str, steps: int = 4) -> Path:
        path = self.root / f"random-{preset}-s{steps}.pt"
        if not path.exists():
            import torch

            from .checkpoint import save_checkpoint
            from .config import get_preset
            from .model import JustZoomIn

            torch.manual_seed(0)
            cfg = get_preset(preset)
            if steps != cfg.steps:  # same 39 m terminal cell, a larger region
                cfg = cfg.with_region(replace(cfg.zoom, steps=steps, size_m=CELL_M * 4**steps))
            save_checkpoint(JustZoomIn(cfg), path)
        return path

    def bundle(self, checkpoint: Path, precision: str) -> Path:
        out = self.root / f"{checkpoint.stem}-{precision}"
        if not (out / "manifest.json").exists():
            from .onnx_export import ParitySettings, export_bundle

            self.log(f"exporting {checkpoint.name} ({precision}) ...")
            export_bundle(checkpoint, out, precision=precision, force=True, threads=self.threads,
                          parity=ParitySettings(images=1, rollouts=20, end_to_end=2))
        return out

    def random_store(self, bundle: Path, dtype: str = "float16") -> Path:
        from jzi.runtime.bundle import load_manifest
        from jzi.runtime.geometry import Region
        from jzi.runtime.tiles import write_store

        out = self.root / f"{bundle.name}-random.jzt"
        if not (out / "tiles.json").exists():
            man = load_manifest(bundle, verify=False)
            region, dim = Region.from_dict(man["region"]), int(man["width"])
            rng = np.random.default_rng(0)
            self.log(f"writing a random {region.steps}-step store ({region.total_views} views) ...")
            write_store(out, region, dim, man["encoder_id"], lambda rows: (rng.standard_normal(
                (len(rows), dim), dtype=np.float32), None), dtype=dtype, batch=1 << 15, force=True, progress=False,
                meta={"source": "random embeddings (benchmark)"})
        return out

    def photos(self, n: int) -> list[Path]:
        """Smooth random street-like JPEGs, 480x960 (decode and resize cost like a real photo)."""
        import cv2

        folder = self.root / "photos"
        folder.mkdir(exist_ok=True)
        paths = [folder / f"q{i:03d}.jpg" for i in range(n)]
        rng = np.random.default_rng(1)
        for p in paths:
            if not p.exists():
                small = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
                img = cv2.resize(small, (960, 480), interpolation=cv2.INTER_CUBIC)
                cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        return paths


def percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))}


# ---- suites ------------------------------------------------------------------------------------------
def run_localizer(bundle: Path, store: Path, photos, threads: int, backend: str = "ort-cpu", warmup: int = 2) -> dict:
    from jzi.runtime.localizer import Localizer

    loc = Localizer(bundle, store, backend=backend, threads=threads)
    for p in photos[:warmup]:
        loc.localize(p)
    return summarize([loc.localize(p).timings for p in photos])


def summarize(rows: list[dict]) -> dict:
    """Per-stage medians and end-to-end percentiles of per-query timings (the Localizer's keys)."""
    total = np.array([r["total_ms"] for r in rows])
    encoder = np.array([r["encoder_ms"] for r in rows])
    # everything in a query except the encoder call, image decoding and preprocessing
    overhead = total - encoder - np.array([r["read_ms"] + r["preprocess_ms"] for r in rows])
    tiles = [r["tiles_ms"] for r in rows if r.get("tiles_ms") is not None]
    return {
        "decode_ms": float(np.median([r["read_ms"] for r in rows])),
        "preprocess_ms": float(np.median([r["preprocess_ms"] for r in rows])),
        "encoder_ms": float(np.median(encoder)),
        "decoder_step_ms": [float(x) for x in np.median([r["decoder_steps_ms"] for r in rows], axis=0)],
        "tiles_ms": float(np.median(tiles)) if tiles else None,
        "overhead_ms": float(np.median(overhead)),
        "overhead_pct": float(np.median(overhead / total * 100)),
        "total_ms": percentiles(total),
        "queries": len(rows),
    }


def run_torch_eager(checkpoint: Path, store: Path, photos, threads: int, warmup: int = 2) -> dict:
    """The same loop as the runtime's, in PyTorch eager (tile rows from the same store)."""
    import torch

    from jzi.runtime.images import load_rgb, street_input
    from jzi.runtime.tiles import TileStore

    from .checkpoint import load_checkpoint
    from .model import normalize, split_street

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    st = TileStore(store)
    region, s = st.region, model.cfg.image_size
    dec = model.decoder

    @torch.inference_mode()
    def one(path):
        t = [time.perf_counter()]
        rgb = load_rgb(path)
        t.append(time.perf_counter())
        x = split_street(normalize(torch.from_numpy(street_input(rgb, s))[None]))
        t.append(time.perf_counter())
        g = model.encode_street(x)
        t.append(time.perf_counter())
        keys, values = dec.empty_cache(1)
        prev, idx, steps = torch.zeros(1, dtype=torch.long), 0, []
        for k in range(region.steps):
            view = torch.from_numpy(np.asarray(st.embeddings[region.level_offset(k) + idx], np.float32))[None]
            t0 = time.perf_counter()
            logits, keys, values = dec.step(g, view, prev, torch.tensor(k), keys, values)
            prev = logits.argmax(-1)
            steps.append((time.perf_counter() - t0) * 1e3)
            idx = idx * region.n_actions + int(prev)
        t.append(time.perf_counter())
        ms = np.diff(t) * 1e3
        return {"read_ms": ms[0], "preprocess_ms": ms[1], "encoder_ms": ms[2], "decoder_steps_ms": steps,
                "tiles_ms": None, "total_ms": (t[-1] - t[0]) * 1e3}

    for p in photos[:warmup]:
        one(p)
    return summarize([one(p) for p in photos])


def suite_latency(args, wd: Workdir) -> list[dict]:
    from jzi.runtime.backends import available_backends
    from jzi.runtime.bundle import load_manifest

    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        photos = wd.photos(args.queries)
        fp32 = wd.bundle(ckpt, "fp32")
        store = wd.random_store(fp32)
        for precision in ("fp32", "int8"):
            bundle = wd.bundle(ckpt, precision)
            status = available_backends(load_manifest(bundle, verify=False))
            for backend, why in status.items():
                if backend == "tensorrt" and precision == "int8":
                    continue  # engines come from the fp32/fp16 ONNX
                if why != "ok":
                    rows.append({"preset": preset, "backend": f"{backend} {precision}", "skipped": why})
                    continue
                wd.log(f"latency: {preset} {backend} {precision}")
                rows.append({"preset": preset, "backend": f"{backend} {precision}",
                             **run_localizer(bundle, store, photos, args.threads, backend)})
        wd.log(f"latency: {preset} torch eager")
        rows.append({"preset": preset, "backend": "torch-eager fp32",
                     **run_torch_eager(ckpt, store, photos, args.threads)})
    return rows


def suite_reference(args, wd: Workdir) -> list[dict]:
    """Per query, the authors' pipeline (render, encode 4 views, decoder re-run each step) vs jzi."""
    import torch

    from jzi.runtime.imagery import open_source
    from jzi.runtime.localizer import Localizer

    from .checkpoint import load_checkpoint
    from .reference import AuthorsPipeline

    if not args.source:
        raise SystemExit("jzi-bench: error: the reference suite needs --source IMAGERY (e.g. a synthetic world's "
                         "satellite/ folder from jzi-synth)")
    source = open_source(args.source)
    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        photos = wd.photos(args.queries)
        model, _ = load_checkpoint(ckpt)
        torch.set_num_threads(args.threads)
        ref = AuthorsPipeline(model, source)
        fp32 = wd.bundle(ckpt, "fp32")
        store = Path(args.tiles) if args.tiles else wd.random_store(fp32)
        jzi = {p: Localizer(wd.bundle(ckpt, p), store, backend="ort-cpu", threads=args.threads) for p in ("fp32", "int8")}
        from jzi.runtime.images import load_rgb

        for p in photos[:2]:  # warm-up
            ref.localize(load_rgb(p))
            for loc in jzi.values():
                loc.localize(p)
        ref_ms, jzi_ms = [], {p: [] for p in jzi}
        for p in photos:
            t0 = time.perf_counter()
            ref.localize(load_rgb(p))  # decoding included, as jzi's figure includes it
            ref_ms.append((time.perf_counter() - t0) * 1e3)
            for prec, loc in jzi.items():
                jzi_ms[prec].append(loc.localize(p).timings["total_ms"])
        row = {"preset": preset, "queries": len(photos), "reference_ms": percentiles(ref_ms),
               "store": "built from the source" if args.tiles else "random embeddings (speed only)"}
        for prec, ms in jzi_ms.items():
            row[f"jzi_{prec}_ms"] = percentiles(ms)
            row[f"speedup_{prec}"] = float(np.median(np.array(ref_ms) / np.array(ms)))
        rows.append(row)
    return rows


def suite_accuracy(args, wd: Workdir) -> list[dict]:
    """Synthetic test split: PyTorch, the runtime (fp32/int8, fp32/fp16 store, greedy/beam 4), InfoNCE retrieval."""
    from jzi.runtime.geometry import distance_m
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import build_store

    from .checkpoint import load_checkpoint
    from .data import image_path, read_split
    from .evaluate import evaluate, path_metrics
    from .retrieval import evaluate_retrieval, load_raster_source, train_infonce

    if not (args.data and args.checkpoint):
        raise SystemExit("jzi-bench: error: the accuracy suite needs --data WORLD (jzi-synth) and --checkpoint "
                         "(a model trained on it)")
    root, ckpt = Path(args.data), Path(args.checkpoint)
    model, _ = load_checkpoint(ckpt)
    region = model.cfg.zoom
    torch_eval = evaluate(model, root, "test", log=wd.log)
    records = read_split(root, "test", region, log=wd.log)
    photos = [image_path(root, r.image_id) for r in records]
    truth = np.array([r.path for r in records])
    latlon = np.array([r.latlon for r in records])
    torch_paths = np.array(torch_eval["paths"])
    rows = [{"method": "PyTorch greedy (jzi-eval)", **_recalls(torch_eval)}]
    stores = {}
    for dtype in ("float32", "float16"):
        stores[dtype] = wd.root / f"{ckpt.stem}-{dtype}.jzt"
        if not (stores[dtype] / "tiles.json").exists():
            build_store(stores[dtype], wd.bundle(ckpt, "fp32"), root / "satellite", threads=args.threads,
                        dtype=dtype, force=True, progress=False)
    for precision, dtype, beams in (("fp32", "float32", 1), ("fp32", "float16", 1), ("int8", "float16", 1),
                                    ("fp32", "float16", 4)):
        loc = Localizer(wd.bundle(ckpt, precision), stores[dtype], backend="ort-cpu", threads=args.threads)
        res = [loc.localize(p, beams=beams) for p in photos]
        paths = np.array([r.path for r in res])
        m = path_metrics(paths, truth, latlon, region)
        row = {"method": f"jzi {precision} bundle, {dtype} store, " + ("greedy" if beams == 1 else f"beam {beams}"),
               **_recalls(m), "same_path_as_pytorch": float((paths == torch_paths).all(1).mean())}
        if beams > 1:
            best = np.array([[distance_m(np.array([c.latitude, c.longitude]), ll) for c in r.candidates]
                             for r, ll in zip(res, latlon)]).min(1)
            row.update({f"R@{x}m@{beams}": float((best <= x).mean()) for x in (40, 50, 100)})
        rows.append(row)
    source = load_raster_source(root)
    retr_model, info = train_infonce(model.cfg, root, source, args.minutes, log=wd.log)
    retr = evaluate_retrieval(retr_model, root, source, log=wd.log)
    rows.append({"method": f"InfoNCE flat retrieval ({args.minutes:g} min training, {info['steps']} steps)",
                 **_recalls(retr), "database_cells": retr["database_cells"],
                 "database_build_s": retr["database_build_s"]})
    for r in rows:
        r["data"] = "synthetic"
    return rows


def _recalls(m: dict) -> dict:
    return {k: m[k] for k in ("R@40m", "R@50m", "R@100m", "strict", "median_error_m", "queries")}


def suite_kvcache(args, wd: Workdir) -> list[dict]:
    import torch

    from .config import get_preset
    from .model import Decoder
    from .reference import decoder_loop

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        for steps in (4, 8):
            cfg = get_preset(preset)
            cfg = cfg.with_region(replace(cfg.zoom, steps=steps))
            dec = Decoder(cfg).eval()
            g = torch.randn(1, cfg.width)
            table = [torch.randn(min(16**lvl, 4096), cfg.width) for lvl in range(steps)]
            times = {}
            for cached in (True, False):
                decoder_loop(dec, g, table, steps, cached)
                ms = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    decoder_loop(dec, g, table, steps, cached)
                    ms.append((time.perf_counter() - t0) * 1e3)
                times["cached" if cached else "recompute"] = float(np.median(ms))
            rows.append({"preset": preset, "steps": steps, "kv_cache_ms": times["cached"],
                         "recompute_ms": times["recompute"], "speedup": times["recompute"] / times["cached"]})
    return rows


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


def peak_rss_mb() -> float:
    """This process's resident high-water mark. VmHWM belongs to the address space exec made, unlike
    getrusage's ru_maxrss, which a child inherits from a large parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


SUITES = {"latency": suite_latency, "reference": suite_reference, "kvcache": suite_kvcache,
          "scale": suite_scale, "throughput": suite_throughput, "accuracy": suite_accuracy}


# ---- reporting ----------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    import onnxruntime

    info = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d")}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    except OSError:
        pass
    return info


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, dict):
        return " ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n== {name} ==")
    for row in rows:
        print("  " + "  ".join(f"{k}: {_fmt(v)}" for k, v in row.items()))


def plot(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    lat = [r for r in results.get("latency", []) if "total_ms" in r]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['preset']}\n{r['backend']}" for r in lat]
        enc = [r["encoder_ms"] for r in lat]
        rest = [r["total_ms"]["p50"] - r["encoder_ms"] for r in lat]
        ax.bar(labels, enc, label="encoder")
        ax.bar(labels, rest, bottom=enc, label="everything else")
        ax.set_ylabel("ms per query (p50)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("jzi query latency by backend")
        fig.tight_layout()
        made.append(folder / "latency.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    scale = results.get("scale", [])
    if scale:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        km = [r["region_km"] for r in scale]
        a1.plot(km, [r["jzi"].get("total_ms", np.nan) for r in scale], "o-", label="jzi (zoom)")
        a1.plot(km, [r.get("flat_query_ms", np.nan) for r in scale], "s--", label="flat retrieval")
        a2.plot(km, [r["jzi"].get("peak_rss_mb", np.nan) for r in scale], "o-", label="jzi (zoom)")
        a2.plot(km, [r["flat"].get("peak_rss_mb", np.nan) for r in scale], "s--", label="flat retrieval")
        for a, yl in ((a1, "ms per query"), (a2, "peak memory (MB)")):
            a.set_xscale("log")
            a.set_xlabel("region side (km), 39 m cells")
            a.set_ylabel(yl)
            a.legend()
        a2.set_yscale("log")
        fig.suptitle("scale: jzi vs flat retrieval (random weights/embeddings)")
        fig.tight_layout()
        made.append(folder / "scale.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="jzi-bench", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("suites", nargs="*", default=["latency"], help=f"any of {', '.join(SUITES)} (default: latency)")
    p.add_argument("--preset", dest="presets", action="append", choices=PRESET_CHOICES,
                   help="model preset(s) to measure (repeatable; default tiny)")
    p.add_argument("--checkpoint", help="trained checkpoint (default: random weights of the preset)")
    p.add_argument("--source", help="imagery for the reference suite (XYZ folder / layout.yaml / GeoTIFF)")
    p.add_argument("--data", help="a dataset root in the authors' format (accuracy suite; e.g. from jzi-synth)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of the InfoNCE baseline (default 10)")
    p.add_argument("--tiles", help="tile store built from --source (reference suite; default: random embeddings)")
    p.add_argument("--queries", type=int, default=20, help="queries per configuration (default 20)")
    p.add_argument("--repeats", type=int, default=20, help="repeats for micro-benchmarks (default 20)")
    p.add_argument("--build-batch", type=int, default=16, help="views per batch for the build-rate figure")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads (default: all cores)")
    p.add_argument("--workdir", default="bench-out", help="where artifacts are cached (default bench-out/)")
    p.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.presets = args.presets or ["tiny"]
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker[0], args.worker[1:])
        return 0
    wd = Workdir(args.workdir, args.threads, log=lambda m: print(m, file=sys.stderr))
    results = {"machine": machine_info(args.threads), "weights": args.checkpoint or "random"}
    for suite in args.suites:
        rows = SUITES[suite](args, wd)
        results[suite] = rows
        print_table(suite, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plots:
        for path in plot(results, Path(args.plots)):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
