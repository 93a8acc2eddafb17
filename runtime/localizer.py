"""The zoom loop: one street photo in, a latitude/longitude out. No torch anywhere.

    loc = Localizer("bundle/", "region.jzt")            # backend="auto", threads=None
    r = loc.localize("photo.jpg")                        # greedy
    r.latitude, r.longitude, r.path, r.step_probs, r.confidence, r.timings
    r = loc.localize("photo.jpg", beams=4)               # r.candidates: the top 4 cells with scores

Per query: decode and stretch the photo to S x 2S (preprocess), one street-encoder call on the
batch of queries (the graph encodes both halves and averages them), then for each of the
``steps`` levels:

    1. read the embedding row of the current view from the tile store's memmap (no imagery;
       each block of rows is verified against its checksum the first time it is read),
    2. run one decoder step against the KV cache (its buffers were allocated once),
    3. log-softmax over the 16 cells, then argmax (greedy) or top-k over beams x cells (beam search),
    4. hand this step's cache to the next step: a pointer swap (greedy) or a gather by beam parent.

The answer is the centre of the last chosen cell (``Region.path_center``); the confidence is the
product of the chosen cells' probabilities.

Threads: one ``Localizer`` may be shared by any number of threads. ``localize``, ``localize_batch``
and ``zoom`` are thread-safe and give every caller exactly the answer a serial run gives. Reading
and resizing photos runs in the callers' threads in parallel; the backend (its decoders, KV caches
and bound buffers) is used by one batch at a time under a lock. Single ``localize`` calls that
arrive while a batch runs are gathered into the next encoder batch (dynamic batching, up to
``max_batch`` photos with the same ``beams``), so concurrent callers are served at least as fast
as serial ones. Everything else (``manifest``, ``region``, ``store``) is read-only after
construction.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .backends import Backend, open_backend
from .bundle import load_manifest
from .images import load_rgb, street_input
from .tiles import TileStore


class LocalizerError(ValueError):
    """A bundle/store pair that cannot work together, with one line saying why."""


@dataclass
class Candidate:
    latitude: float
    longitude: float
    path: list[int]
    score: float  # sum of the chosen cells' log-probabilities
    probability: float  # exp(score): the product of the chosen cells' probabilities


@dataclass
class Localization:
    latitude: float
    longitude: float
    path: list[int]
    step_probs: list[float]
    confidence: float
    candidates: list[Candidate] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # milliseconds per stage

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(eq=False)  # compared by identity: two requests for the same photo are still two requests
class _Request:
    """One waiting ``localize`` call: its preprocessed photo, and its answer or failure once served."""
    street: np.ndarray  # uint8 [S, 2S, 3]
    beams: int
    read_ms: float
    preprocess_ms: float
    result: Localization | None = None
    error: BaseException | None = None


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


class Localizer:
    def __init__(self, bundle, tiles, backend: str | Backend = "auto", threads: int | None = None,
                 verify_bundle: bool = True, max_batch: int = 8):
        self.manifest = load_manifest(bundle, verify=verify_bundle)
        self.store = tiles if isinstance(tiles, TileStore) else TileStore(tiles)
        check_pair(self.manifest, self.store)
        if not isinstance(backend, Backend):  # localizing needs no view encoder: leave it unloaded
            backend = open_backend(bundle, self.manifest, backend, threads, graphs=("street_encoder", "decoder"))
        self.backend = backend
        self.region = self.store.region
        self.image_size = int(self.manifest["image_size"])
        self.n_actions = self.region.n_actions
        self.steps = self.region.steps
        self._offsets = [self.region.level_offset(lvl) for lvl in range(self.steps)]
        if int(max_batch) < 1:
            raise LocalizerError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self._engine = threading.Lock()  # held while one batch uses the backend's decoders and buffers
        self._queue = threading.Lock()  # guards _waiting
        self._waiting: list[_Request] = []  # single queries not yet served, oldest first

    # ---- public API --------------------------------------------------------------------------
    def localize(self, image, beams: int = 1) -> Localization:
        """One photo (a path, encoded bytes or an RGB array) -> its Localization.

        Thread-safe; concurrent calls are served together in one encoder batch (see the module docstring).
        """
        self._check_beams(beams)
        t0 = time.perf_counter_ns()
        rgb = load_rgb(image)
        t1 = time.perf_counter_ns()
        req = _Request(street_input(rgb, self.image_size), int(beams), _ms(t0, t1), _ms(t1, time.perf_counter_ns()))
        with self._queue:
            self._waiting.append(req)
        while req.result is None and req.error is None:
            with self._engine:  # leader: serve the oldest waiting queries (first come, first served)
                with self._queue:
                    if not self._waiting:
                        break  # ours was served while we waited for the lock
                    k = self._waiting[0].beams
                    group = [r for r in self._waiting if r.beams == k][: self.max_batch]
                    for r in group:
                        self._waiting.remove(r)
                try:
                    results = self._run(np.stack([r.street for r in group]), k)
                except BaseException as e:  # every caller in the batch sees the failure
                    for r in group:
                        r.error = e
                    if not isinstance(e, Exception):  # KeyboardInterrupt & co.: stop leading now
                        with self._queue:
                            if req in self._waiting:
                                self._waiting.remove(req)
                        raise
                    continue
                for r, res in zip(group, results):
                    res.timings.update(read_ms=r.read_ms, preprocess_ms=r.preprocess_ms)
                    res.timings["total_ms"] += r.read_ms + r.preprocess_ms
                    r.result = res
        if req.error is not None:
            raise req.error
        return req.result

    def localize_batch(self, images, beams: int = 1) -> list[Localization]:
        """Several photos in one encoder batch and one decoder batch (queries x beams rows). Thread-safe."""
        self._check_beams(beams)
        images = list(images)
        if not images:
            return []
        t0 = time.perf_counter_ns()
        rgbs = [load_rgb(img) for img in images]
        t1 = time.perf_counter_ns()
        batch = np.empty((len(rgbs), self.image_size, 2 * self.image_size, 3), np.uint8)
        for i, rgb in enumerate(rgbs):
            street_input(rgb, self.image_size, out=batch[i])
        t2 = time.perf_counter_ns()
        with self._engine:
            results = self._run(batch, beams)
        for r in results:
            r.timings.update(read_ms=_ms(t0, t1), preprocess_ms=_ms(t1, t2))
            r.timings["total_ms"] += _ms(t0, t2)
        return results

    def _run(self, batch: np.ndarray, beams: int) -> list[Localization]:
        """Encode and zoom a preprocessed batch; the caller holds ``_engine``."""
        t0 = time.perf_counter_ns()
        query = self.backend.encode_street(batch)
        t1 = time.perf_counter_ns()
        if not np.isfinite(query).all():
            raise LocalizerError("the street encoder returned NaN or Inf for a photo (a damaged bundle?)")
        results = self._zoom(query, beams)
        shared = {"encoder_ms": _ms(t0, t1), "batch": len(batch), "total_ms": _ms(t0, time.perf_counter_ns())}
        for r in results:
            r.timings = {**shared, **r.timings}
        return results

    def _check_beams(self, beams) -> None:
        if not 1 <= int(beams) <= self.n_actions:
            raise LocalizerError(f"beams must be between 1 and {self.n_actions}, got {beams}")

    def zoom(self, query: np.ndarray, beams: int = 1) -> list[Localization]:
        """The decoder loop from street embeddings ``query`` [B, D]: one Localization per row. Thread-safe."""
        self._check_beams(beams)
        with self._engine:
            return self._zoom(query, beams)

    def _zoom(self, query: np.ndarray, beams: int) -> list[Localization]:
        t_start = time.perf_counter_ns()
        query = np.asarray(query, dtype=np.float32)
        n_queries, k, A, S = len(query), int(beams), self.n_actions, self.steps
        n = n_queries * k
        dec = self.backend.decoder(n)
        dec.reset()
        dec.query[...] = np.repeat(query, k, axis=0) if k > 1 else query
        dec.prev_action[...] = 0
        index = np.zeros(n, np.int64)  # each row's view index within the current level
        paths = np.zeros((n, S), np.int64)
        logps = np.zeros((n, S), np.float64)
        scores = np.zeros(n, np.float64)
        rows = np.arange(n)
        tile_ns, step_ms = 0, []
        for step in range(S):
            t0 = time.perf_counter_ns()
            # the memmap rows of this level's views -> the bound input buffer, fp16 -> fp32; each block of
            # rows is checksummed and checked finite the first time it is read
            dec.view[...] = self.store.read_rows(self._offsets[step] + index)
            dec.step[...] = step
            t1 = time.perf_counter_ns()
            logits = dec.run().astype(np.float64)
            if not np.isfinite(logits).all():
                raise LocalizerError(f"the decoder returned NaN or Inf logits at step {step} (a damaged bundle?)")
            t2 = time.perf_counter_ns()
            logp = logits - logits.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            if k == 1:
                action = logp.argmax(axis=1)
                parents = None
                chosen = logp[rows, action]
                scores += chosen
            else:
                total = scores[:, None] + logp  # [n, A]
                if step == 0:  # every beam holds the same prefix: expand only the first of each query
                    total.reshape(n_queries, k, A)[:, 1:] = -np.inf
                flat = total.reshape(n_queries, k * A)
                top = np.argsort(-flat, axis=1, kind="stable")[:, :k]  # [Q, k], best first
                parents = (np.arange(n_queries)[:, None] * k + top // A).ravel()
                action = (top % A).ravel()
                chosen = logp[parents, action]
                scores = flat[np.arange(n_queries)[:, None], top].ravel()
                paths, logps, index = paths[parents], logps[parents], index[parents]
            paths[:, step] = action
            logps[:, step] = chosen
            index = index * A + action
            dec.prev_action[...] = action
            if step < S - 1:
                dec.advance(parents)
            tile_ns += t1 - t0
            step_ms.append(_ms(t1, t2))  # the decoder call alone; the rest of the step is search bookkeeping
        centres = self.region.path_center(paths)
        t_end = time.perf_counter_ns()
        timings = {"tiles_ms": tile_ns / 1e6, "decoder_steps_ms": step_ms, "decoder_ms": float(sum(step_ms)),
                   "zoom_ms": _ms(t_start, t_end)}
        results = []
        for q in range(n_queries):
            cands = [Candidate(float(centres[r, 0]), float(centres[r, 1]), paths[r].tolist(), float(scores[r]),
                               float(np.exp(scores[r]))) for r in range(q * k, (q + 1) * k)]
            best = q * k
            results.append(Localization(
                latitude=cands[0].latitude, longitude=cands[0].longitude, path=cands[0].path,
                step_probs=np.exp(logps[best]).tolist(), confidence=cands[0].probability,
                candidates=cands if k > 1 else [], timings=dict(timings)))
        return results

    # ---- helpers ---------------------------------------------------------------------------------
    def describe(self) -> str:
        r = self.region
        return (f"{self.backend.describe()}; store {self.store.path.name}: {r.steps} steps over "
                f"{r.size_m / 1000:g} km, {r.cell_size_m:.2f} m cells, {self.store.dtype}")


def check_pair(manifest: dict, store: TileStore) -> None:
    """Refuse a store that this bundle cannot read, naming what differs."""
    r = store.region
    if store.encoder_id != manifest["encoder_id"]:
        raise LocalizerError(
            f"{store.path}: built by encoder {store.encoder_id[:12]}, but the bundle's encoder is "
            f"{str(manifest['encoder_id'])[:12]}; rebuild it with jzi-tiles build --engine BUNDLE")
    if store.dim != int(manifest["width"]):
        raise LocalizerError(f"{store.path}: embeddings are {store.dim}-wide, the bundle's decoder takes {manifest['width']}")
    if (r.grid, r.steps) != (int(manifest["grid"]), int(manifest["steps"])):
        raise LocalizerError(f"{store.path}: a {r.grid}x{r.grid} grid over {r.steps} steps, the bundle's decoder "
                             f"zooms {manifest['grid']}x{manifest['grid']} over {manifest['steps']} steps")
    if r.view_px != int(manifest["image_size"]):
        raise LocalizerError(f"{store.path}: views rendered at {r.view_px} px, the bundle's encoder takes "
                             f"{manifest['image_size']} px")

