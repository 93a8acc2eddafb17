"""Every line of Ray in jzi: tile-store builds and batch localization on a Ray cluster.

    jzi-tiles build --ray [ADDRESS] ...      build_store_ray
    jzi-run --ray [ADDRESS] PHOTOS --out results.parquet      localize_ray (via batch.py)

Ray is optional (``pip install jzi[ray]``); nothing else in jzi imports this module unless asked
to use Ray, and its batch API changes between releases, so it is kept in this one place.

The shape of a job: numbered chunks of work, each taken through two stages by Ray Data,

    CPU tasks (``prepare``: render a chunk's views; photo jobs have no such stage)  ->  actor pool
    (``work``: the model, loaded once per actor; ``num_gpus`` per actor on GPU nodes)  ->  the
    driver, which writes each chunk's result (rows by id, flushed, then marked done) and moves one
    progress bar.

Only the driver writes, so workers need the bundle and the imagery (or photos) at the same path on
every node, but no shared output folder. A rerun after any failure skips the chunks already done.

Failures are bounded (Ray's own defaults retry a crashing actor task forever): every chunk is
attempted at most ``retries + 1`` times, whether an attempt raises or kills its worker process;
a chunk that still fails is reported by id, and more than ``max_failed_chunks`` of them end the
run. A small ledger actor counts attempts per chunk, so a chunk whose worker keeps dying is named
too.
"""
from __future__ import annotations

import logging
import pickle
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


class RayJobError(RuntimeError):
    """A Ray job that could not run or finish, with one line saying why."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayJobError("Ray is not installed: pip install 'jzi[ray]' (ray[data])") from None
    return ray


@dataclass
class RayOptions:
    """How a job uses the cluster. ``address`` None starts a private local Ray with ``local_cpus``."""

    address: str | None = None
    workers: int = 1  # model actors
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    retries: int = 2  # extra attempts per chunk
    max_failed_chunks: int = 0
    local_cpus: int | None = None

    def __post_init__(self):
        if self.workers < 1 or self.retries < 0 or self.max_failed_chunks < 0 or self.worker_cpus < 0 \
                or self.worker_gpus < 0 or (self.local_cpus is not None and self.local_cpus < 1):
            raise RayJobError("--workers and --local-cpus must be at least 1; --retries, --max-failed-chunks, "
                              "--worker-cpus and --worker-gpus at least 0")


def add_arguments(p) -> None:
    """``--ray [ADDRESS]`` and the knobs of a Ray job, for jzi-tiles build and jzi-run."""
    g = p.add_argument_group("Ray (pip install 'jzi[ray]')")
    g.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray: a private local instance, or the cluster at ADDRESS (auto, ray://host:10001); "
                        "RAY_ADDRESS is honoured")
    g.add_argument("--workers", type=int, default=1, help="model actors (1)")
    g.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs reserved per model actor (1)")
    g.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per model actor, e.g. 1 on GPU nodes (0)")
    g.add_argument("--retries", type=int, default=2, help="extra attempts per chunk after a failure or a dead worker (2)")
    g.add_argument("--max-failed-chunks", type=int, default=0,
                   help="chunks that may fail before the run stops; they are listed and redone by a rerun (0)")
    g.add_argument("--local-cpus", type=int, default=None, help="CPUs of a private local Ray (default: all)")


def options_from_args(args) -> RayOptions:
    return RayOptions(address=args.ray or None, workers=args.workers, worker_cpus=args.worker_cpus,
                      worker_gpus=args.worker_gpus, retries=args.retries, max_failed_chunks=args.max_failed_chunks,
                      local_cpus=args.local_cpus)


class ChunkWork:
    """What a job does with one chunk; pickled to the workers, so keep it to plain settings.

    ``prepare(chunk, input) -> prepared`` runs as a CPU task (None: no such stage); ``open()`` runs
    once per actor and returns ``work(chunk, prepared or input) -> result``.
    """

    prepare: Callable[[int, Any], Any] | None = None

    def open(self) -> Callable[[int, Any], Any]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def run_chunks(chunks: list[int], work: ChunkWork, opts: RayOptions, on_done: Callable[[int, Any], None],
               inputs: Callable[[int], Any] | None = None) -> list[tuple[int, str]]:
    """Run ``work`` over ``chunks`` on Ray; ``on_done(chunk, result)`` in the driver as results arrive.

    ``inputs(chunk)`` (optional) is what travels with each chunk to its workers (e.g. its photos).

    Returns the failed chunks as (id, last error) when there are at most ``max_failed_chunks``;
    raises RayJobError naming them when there are more.
    """
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, opts)
    try:
        return _run(ray, chunks, work, opts, on_done, inputs)
    finally:
        if started_here:
            ray.shutdown()


def _init(ray, opts: RayOptions) -> None:
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if opts.address:
        kw["address"] = opts.address
    else:
        kw["num_cpus"] = opts.local_cpus
    try:
        ray.init(**kw)
    except Exception as e:  # noqa: BLE001 - Ray raises plain Exception for a start-up time-out
        raise RayJobError(f"cannot start or reach Ray at {opts.address or 'a local instance'}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def _run(ray, chunks, work, opts, on_done, inputs):
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller's bar is the only one
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.max_errored_blocks = opts.max_failed_chunks  # blocks lost to dead workers, beyond our own counting
    attempts = opts.retries + 1
    ledger = ray.remote(num_cpus=0, max_restarts=0)(_Ledger).remote(attempts)
    with warnings.catch_warnings():  # retries are still only settable as ray_remote_args (deprecated in 2.60)
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = _pipeline(ray, chunks, work, opts, ledger, inputs)
    failed: list[tuple[int, str]] = []
    rows = iter(ds.iter_rows())
    try:
        _collect(ray, rows, ledger, opts, on_done, failed)
    finally:
        getattr(rows, "close", lambda: None)()  # stop the pipeline now when we leave early
    if len(failed) > opts.max_failed_chunks:
        raise RayJobError(f"{len(failed)} chunk(s) failed after {attempts} attempt(s) each "
                          f"(allowed: {opts.max_failed_chunks}): {describe_failures(failed)}")
    return failed


def _collect(ray, rows, ledger, opts, on_done, failed) -> None:
    """Hand finished chunks to ``on_done``; gather failed ones until there are too many."""
    while len(failed) <= opts.max_failed_chunks:
        try:
            row = next(rows)
        except StopIteration:
            break
        except Exception as e:  # Ray gave up by itself (e.g. a chunk whose actor died more times than allowed)
            lost = ray.get(ledger.exhausted.remote())
            failed += [(c, f"its worker died {n} times") for c, n in lost if c not in {f for f, _ in failed}]
            if not failed:
                raise RayJobError(f"the Ray job failed: {_first_line(e)}") from None
            break
        chunk, error = int(row["chunk"]), str(row["error"])
        if error:
            failed.append((chunk, error))
        else:
            on_done(chunk, pickle.loads(row["payload"]))


def _pipeline(ray, chunks, work: ChunkWork, opts: RayOptions, ledger, inputs):
    """from_items(chunks) -> CPU tasks (prepare) -> actor pool (work), each chunk its own block."""
    attempts = opts.retries + 1
    # Ray-level retries outlast ours by one, so the attempt after the last allowed one comes back
    # as a failure row naming the chunk instead of an exception from deep inside Ray Data. Actor
    # restarts are per actor, not per chunk: enough for every tolerated failing chunk, and finite.
    ray_retries = attempts
    restarts = attempts * (opts.max_failed_chunks + 1) + opts.retries
    stage = {"work": work, "ledger": ledger, "attempts": attempts}
    items = [{"chunk": c, "error": "", "payload": pickle.dumps(inputs(c) if inputs else None, protocol=5)}
             for c in chunks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(chunks)))
    if work.prepare is not None:
        ds = ds.map_batches(_prepare_batch, batch_size=1, fn_kwargs=stage, num_cpus=1, max_retries=ray_retries,
                            retry_exceptions=False)
    return ds.map_batches(_WorkActor, batch_size=1, fn_constructor_kwargs=stage,
                          compute=ray.data.ActorPoolStrategy(size=opts.workers), num_cpus=opts.worker_cpus,
                          num_gpus=opts.worker_gpus or None, max_restarts=restarts, max_task_retries=ray_retries)


def describe_failures(failed: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"chunk {c}: {err}" for c, err in failed[:10])
    return shown + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"


class _Ledger:
    """Counts attempts per chunk across retries and worker restarts."""

    def __init__(self, attempts: int):
        self.attempts, self.seen = attempts, {}

    def attempt(self, stage: str, chunk: int) -> int:
        key = (stage, chunk)
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key]

    def exhausted(self) -> list[tuple[int, int]]:
        return sorted((c, n) for (_, c), n in self.seen.items() if n >= self.attempts)


def _attempt(ledger, attempts: int, stage: str, chunk: int, fn, *args) -> dict:
    """One chunk through one stage, retried in-process; a failure becomes a row with the error."""
    import ray

    error = ""
    while True:
        n = ray.get(ledger.attempt.remote(stage, chunk))
        if n > attempts:
            return {"chunk": chunk, "error": error or f"its worker died {n - 1} times", "payload": b""}
        try:
            return {"chunk": chunk, "error": "", "payload": pickle.dumps(fn(*args), protocol=5)}
        except Exception as e:  # noqa: BLE001 - any failure of user-facing work is reported per chunk
            error = f"{type(e).__name__}: {e}".splitlines()[0]
            traceback.clear_frames(e.__traceback__)


def _rows(results: list[dict]) -> dict:
    return {"chunk": np.array([r["chunk"] for r in results], np.int64),
            "error": np.array([r["error"] for r in results], object),
            "payload": np.array([r["payload"] for r in results], object)}


def _prepare_batch(batch: dict, work: ChunkWork, ledger, attempts: int) -> dict:
    return _rows([_attempt(ledger, attempts, "prepare", int(c), work.prepare, int(c), pickle.loads(payload))
                  for c, payload in zip(batch["chunk"], batch["payload"])])


class _WorkActor:
    def __init__(self, work: ChunkWork, ledger, attempts: int):
        self.ledger, self.attempts, self.work = ledger, attempts, work.open()

    def __call__(self, batch: dict) -> dict:
        out = []
        for c, err, payload in zip(batch["chunk"], batch["error"], batch["payload"]):
            if err:  # the CPU stage gave up on it: pass the failure through
                out.append({"chunk": int(c), "error": str(err), "payload": b""})
            else:
                out.append(_attempt(self.ledger, self.attempts, "work", int(c), self.work, int(c), pickle.loads(payload)))
        return _rows(out)


# ---------------------------------------------------------------------------------------------
# tile stores
# ---------------------------------------------------------------------------------------------
class TileChunks(ChunkWork):
    """Render a chunk's views (CPU task), encode them in an actor holding the bundle's view encoder."""

    def __init__(self, layout, source, bundle_dir, *, backend: str = "auto", threads: int | None = None,
                 batch: int = 32):
        self.layout, self.source, self.bundle_dir = layout, str(source), str(bundle_dir)
        self.backend, self.threads, self.batch = backend, threads, batch
        self.prepare = self._render

    def _render(self, chunk: int, _input=None):
        from .imagery import open_source
        from .tiles import make_thumbs, render_views

        src = _cached(("source", self.source), lambda: open_source(self.source))
        start, stop = self.layout.chunk_range(chunk)
        views = render_views(src, self.layout.region, np.arange(start, stop))
        return views, make_thumbs(views, self.layout.thumb_px)

    def open(self):
        from .backends import open_backend
        from .bundle import load_manifest

        manifest = load_manifest(self.bundle_dir)
        engine = open_backend(self.bundle_dir, manifest, backend=self.backend, threads=self.threads,
                              graphs=("view_encoder",))

        def encode(chunk: int, prepared):
            views, thumbs = prepared
            emb = np.concatenate([engine.encode_views(views[a:a + self.batch]) for a in range(0, len(views), self.batch)])
            return np.asarray(emb, np.float32), thumbs

        return encode


_CACHE: dict = {}


def _cached(key, make):
    """One opened imagery source per worker process (tasks reuse their process)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def write_store_ray(out, layout, work: ChunkWork, opts: RayOptions, *, force: bool = False,
                    progress: bool = True) -> Path:
    """Fill the store ``out`` with ``work`` (a ChunkWork returning (embeddings, thumbnails) per chunk) on Ray."""
    from tqdm import tqdm

    from .tiles import ChunkWriter, chunks_done, finalize_store, prepare_build

    partial = prepare_build(out, layout, force)
    if partial is None:
        return Path(out)
    done = chunks_done(partial, layout)
    todo = [c for c in range(layout.n_chunks) if c not in done]
    total = layout.region.total_views
    already = sum(b - a for a, b in map(layout.chunk_range, done))
    bar = tqdm(total=total, initial=already, unit="view", desc=f"tiles {Path(out).name} (ray)", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    writer = ChunkWriter(partial, layout)

    def on_done(chunk, result):
        emb, thumbs = result
        writer.write(chunk, emb, thumbs)
        bar.update(len(emb))

    try:
        failed = run_chunks(todo, work, opts, on_done) if todo else []
    finally:
        bar.close()
        writer.close()
    if failed:
        raise RayJobError(f"{len(failed)} chunk(s) failed, the rest are built; fix the cause and run again to "
                          f"finish: {describe_failures(failed)}")
    return finalize_store(out)


def build_store_ray(out, bundle_dir, source, opts: RayOptions, *, backend: str = "auto", threads: int | None = None,
                    dtype: str = "float16", batch: int = 32, chunk_rows: int | None = None, thumb_px: int = 0,
                    region=None, force: bool = False, progress: bool = True) -> Path:
    """``build_store`` on Ray: views rendered by CPU tasks, encoded by ``opts.workers`` encoder actors."""
    from .imagery import open_source
    from .tiles import CHUNK_ROWS, plan_build

    import_ray()
    _, layout = plan_build(bundle_dir, dtype=dtype, thumb_px=thumb_px, chunk_rows=chunk_rows or CHUNK_ROWS,
                           region=region, source=source)
    open_source(source)  # a bad source is one clear error here, not a failure in every chunk
    work = TileChunks(layout, source, bundle_dir, backend=backend, threads=threads, batch=batch)
    return write_store_ray(out, layout, work, opts, force=force, progress=progress)


# ---------------------------------------------------------------------------------------------
# batch localization
# ---------------------------------------------------------------------------------------------
class PhotoChunks(ChunkWork):
    """Localize a chunk of photos in an actor holding a Localizer (bundle and store loaded once)."""

    def __init__(self, bundle_dir, tiles, *, backend: str = "auto", threads: int | None = None, beams: int = 1,
                 batch: int = 1, max_pixels: int | None = None):
        self.bundle_dir, self.tiles, self.backend, self.threads = str(bundle_dir), str(tiles), backend, threads
        self.beams, self.batch, self.max_pixels = beams, batch, max_pixels

    def open(self):
        from .batch import localize_chunk
        from .localizer import Localizer

        loc = Localizer(self.bundle_dir, self.tiles, backend=self.backend, threads=self.threads)
        return lambda chunk, queries: localize_chunk(loc, queries, beams=self.beams, batch=self.batch,
                                                     max_pixels=self.max_pixels)


def localize_ray(table, work: PhotoChunks, opts: RayOptions, progress: bool = True) -> list[tuple[int, str]]:
    """Fill ``table`` (a batch.ResultsTable) with the chunks it lacks; returns the failed chunks."""
    from tqdm import tqdm

    done = table.done()
    todo = [c for c in range(table.n_chunks) if c not in done]
    bar = tqdm(total=len(table.queries), initial=sum(len(table.chunk(c)) for c in done), unit="photo",
               desc=f"{table.out.name} (ray)", disable=not progress, dynamic_ncols=True)

    def on_done(chunk, rows):
        table.write(chunk, rows)
        bar.update(len(rows))

    try:
        return run_chunks(todo, work, opts, on_done, inputs=table.chunk) if todo else []
    finally:
        bar.close()
