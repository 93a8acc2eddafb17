"""``jzi-bench throughput``: tile builds against the bare view encoder, and jzi-run's photos/s by batch size.

Both side by side through :mod:`jzi.export.bench_harness` (each contender loaded once in its own
process, rounds alternating, the figure the median of per-round ratios):

- **tile builds** (needs ``--source``): ``jzi-tiles build``'s stages and loop (views rendered and
  chunks written on a side thread while the encoder runs) and the same loop rendering each batch
  before encoding it on one thread, against the bare view encoder on the same views rendered
  beforehand. Same batches (``--build-batch``), threads and chunks: the bundle's whole region, or
  with ``--build-views N`` every K-th chunk of it (about N views, the chunks of ``jzi-tiles build
  --shard 0/K``). Start-up (bundle check, opening imagery and encoder) and the merge are outside the
  timed runs for all three; the ratio is build views/s over encoder views/s.
- **photos/s of jzi-run** over a folder of 480x960 JPEGs (decode, encode, zoom: ``localize_chunk``,
  the loop ``jzi-run --out`` runs) with ``--batch 1`` against ``--batch B`` (``--run-batch``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bench_harness import side_by_side
from .bench_workdir import Workdir


def _build_chunks(bundle, source, batch: int, views: int | None):
    """The layout of the measured builds and the chunks they cover (every K-th, about ``views`` rows)."""
    from jzi.runtime.shards import shard_chunks
    from jzi.runtime.tiles import CHUNK_ROWS, plan_build

    chunk_rows = max(batch, views // 8) if views else CHUNK_ROWS
    _, layout = plan_build(bundle, chunk_rows=chunk_rows, source=source)
    shard = (0, max(1, layout.n_chunks * chunk_rows // views) if views else 1)
    return layout, shard, shard_chunks(layout.n_chunks, shard)


def serve_view_encoder(params: dict):
    """The bare view encoder on the build's views, rendered once here; one run encodes them all."""
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.imagery import open_source
    from jzi.runtime.tiles import chunk_batches, render_views

    layout, _, chunks = _build_chunks(params["bundle"], params["source"], params["batch"], params["views"])
    src = open_source(params["source"])
    batches = [rows for _, rows, _ in chunk_batches(layout, chunks, params["batch"])]
    views = [render_views(src, layout.region, rows) for rows in batches]
    engine = open_backend(params["bundle"], load_manifest(params["bundle"]), "ort-cpu", params["threads"],
                          graphs=("view_encoder",))

    def run() -> dict:
        t0 = time.perf_counter()
        for batch in views:
            engine.encode_views(batch)
        return {"ms": (time.perf_counter() - t0) * 1e3, "views": int(sum(map(len, views)))}

    return run


def serve_tile_build(params: dict):
    """A fresh build of the chunks per run, with the stages and loop ``jzi-tiles build`` runs (``view_stages``,
    ``build_chunks``: rendering on the side thread, ahead of the encoder), or with ``params["sequential"]``
    each batch rendered then encoded on this thread. Start-up (bundle check, opening the imagery and the
    encoder) is done once per process, not timed, as for the bare encoder; so is the merge."""
    from jzi.runtime.backends import open_backend
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.imagery import open_source
    from jzi.runtime.tiles import build_chunks, prepare_build, view_stages

    layout, shard, chunks = _build_chunks(params["bundle"], params["source"], params["batch"], params["views"])
    engine = open_backend(params["bundle"], load_manifest(params["bundle"]), "ort-cpu", params["threads"],
                          graphs=("view_encoder",))
    render_stage, encode_stage = view_stages(open_source(params["source"]), layout.region, engine)
    if params["sequential"]:
        render, produce = None, (lambda rows: encode_stage(render_stage(rows)))
    else:
        render, produce = render_stage, encode_stage
    out = Path(params["out"])
    partial = prepare_build(out, layout, force=True)
    n_views = sum(b - a for a, b in map(layout.chunk_range, chunks))

    def run() -> dict:
        for marker in (partial / "done").iterdir():
            marker.unlink()  # every chunk is built afresh in every run
        t0 = time.perf_counter()
        build_chunks(partial, layout, produce, render=render, batch=params["batch"], shard=shard, progress=False,
                     label=out.name)
        return {"ms": (time.perf_counter() - t0) * 1e3, "views": n_views}

    return run


def serve_run_folder(params: dict):
    """jzi-run's loop over the photos (decode, encode, zoom), ``batch`` photos per encoder call; one run = all."""
    from jzi.runtime.batch import localize_chunk
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.run_cli import Query

    loc = Localizer(params["bundle"], params["store"], backend="ort-cpu", threads=params["threads"])
    queries = [Query(Path(p).name, Path(p)) for p in params["photos"]]

    def run() -> dict:
        t0 = time.perf_counter()
        rows = localize_chunk(loc, queries, batch=params["batch"])
        assert all(not r["failure"] for r in rows), rows
        return {"ms": (time.perf_counter() - t0) * 1e3, "photos": len(rows)}

    return run


def _per_s(contender: dict, key: str) -> float:
    return float(np.median([r[key] / r["ms"] * 1e3 for r in contender["runs"]]))


def build_rows(args, wd: Workdir, preset: str, precision: str, bundle: Path) -> dict:
    layout, shard, chunks = _build_chunks(bundle, args.source, args.build_batch, args.build_views)
    common = {"bundle": str(bundle), "source": str(args.source), "batch": args.build_batch,
              "views": args.build_views, "threads": args.threads}
    out = wd.root / f"throughput-{bundle.name}"
    contenders = {"view encoder": ("jzi.export.bench_throughput:serve_view_encoder", common),
                  "jzi-tiles build": ("jzi.export.bench_throughput:serve_tile_build",
                                      {**common, "out": f"{out}.jzt", "sequential": False}),
                  "render then encode": ("jzi.export.bench_throughput:serve_tile_build",
                                         {**common, "out": f"{out}-sequential.jzt", "sequential": True})}
    wd.log(f"throughput: {preset} {precision} tile build, {len(chunks)} chunks of {layout.chunk_rows} rows")
    res = side_by_side(contenders, rounds=args.rounds, baseline="view encoder", threads=args.threads,
                       log=wd.log)
    c = res["contenders"]
    return {"preset": preset, "precision": precision, "what": "tile build vs bare view encoder",
            "views": c["view encoder"]["runs"][0]["views"], "batch": args.build_batch, "threads": args.threads,
            "shard": f"{shard[0]}/{shard[1]}", "chunk_rows": layout.chunk_rows, "rounds": args.rounds,
            "load": res["load"],
            **{f"{name} views_per_s": _per_s(c[name], "views") for name in contenders},
            # speedups = encoder time / build time on the same views = build views/s over encoder views/s
            "jzi-tiles build / encoder": res["speedups"]["jzi-tiles build"],
            "render then encode / encoder": res["speedups"]["render then encode"],
            "store_build_min_estimate": layout.region.total_views / _per_s(c["jzi-tiles build"], "views") / 60}


def run_rows(args, wd: Workdir, preset: str, precision: str, bundle: Path, store: Path) -> dict:
    photos = [str(p) for p in wd.photos(args.queries)]
    batches = [1] + [b for b in args.run_batch if b != 1]
    contenders = {f"--batch {b}": ("jzi.export.bench_throughput:serve_run_folder",
                                   {"bundle": str(bundle), "store": str(store), "photos": photos, "batch": b,
                                    "threads": args.threads}) for b in batches}
    wd.log(f"throughput: {preset} {precision} jzi-run over {len(photos)} photos, batches {batches}")
    res = side_by_side(contenders, rounds=args.rounds, baseline="--batch 1", threads=args.threads, log=wd.log)
    c = res["contenders"]
    return {"preset": preset, "precision": precision, "what": "jzi-run photos/s by --batch", "photos": len(photos),
            "threads": args.threads, "rounds": args.rounds, "load": res["load"],
            **{f"{name} photos_per_s": _per_s(c[name], "photos") for name in contenders},
            **{f"{name} / --batch 1": res["speedups"][name] for name in contenders if name != "--batch 1"}}


def suite_throughput(args, wd: Workdir) -> list[dict]:
    if "build" in args.throughput and not args.source:
        raise SystemExit("jzi-bench: error: the tile-build half of the throughput suite needs --source IMAGERY "
                         "covering the bundle's region (or --throughput run for jzi-run alone)")
    rows = []
    for preset in args.presets:
        ckpt = Path(args.checkpoint) if args.checkpoint else wd.checkpoint(preset)
        for precision in args.precisions:
            bundle = wd.bundle(ckpt, precision)
            if "build" in args.throughput:
                rows.append(build_rows(args, wd, preset, precision, bundle))
            if "run" in args.throughput:  # the store's embeddings are random: speed only
                store = wd.random_store(wd.bundle(ckpt, "fp32"))
                rows.append(run_rows(args, wd, preset, precision, bundle, store))
    return rows
