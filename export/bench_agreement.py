"""``jzi-bench agreement``: do reduced-precision bundles keep a trained model's decisions?

The gate for every reduced precision (int8 decoder, int8 encoders): on the photos of a synthetic
world (jzi-synth) and a model trained on it, the variant bundle takes the fp32 bundle's greedy path
on >= 99.5 % of the *decisive* rollouts (the fp32 best cell leads the runner-up by >= 0.1 in
probability at every step), and returns the same beam-4 candidates, in the same order, on >= 99.5 %
of the queries whose fp32 candidates are decisively ordered (each candidate's log-probability leads
the next one's by >= 0.1). All bundles read the
same tile store, built once by the fp32 bundle (a store is encoded offline and fits every precision
of the same weights). Figures for all rollouts are reported too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_workdir import Workdir

GATE = 0.995
BEAMS = 4
BEAM_GAP = 0.1  # nats between consecutive candidates' scores for a decisive beam ordering
# (label, encoder precision, decoder precision), each compared with the fp32 bundle
VARIANTS = (("fp32 encoders, int8 decoder", "fp32", "int8"),
            ("int8 encoders, fp32 decoder", "int8", "fp32"),
            ("int8 encoders, int8 decoder", "int8", "int8"))


def greedy_logits(loc, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runtime's greedy loop, keeping every step's logits: (paths [N, S], logits [N, S, A])."""
    n, steps, region = len(query), loc.steps, loc.region
    dec = loc.backend.decoder(n)
    dec.reset()
    dec.query[...] = query
    dec.prev_action[...] = 0
    index = np.zeros(n, np.int64)
    paths = np.zeros((n, steps), np.int64)
    logits = np.zeros((n, steps, loc.n_actions), np.float32)
    for k in range(steps):
        dec.view[...] = loc.store.embeddings[region.level_offset(k) + index]
        dec.step[...] = k
        logits[:, k] = dec.run()
        paths[:, k] = logits[:, k].argmax(1)
        index = index * loc.n_actions + paths[:, k]
        dec.prev_action[...] = paths[:, k]
        if k < steps - 1:
            dec.advance()
    return paths, logits


def street_queries(loc, photos, batch: int = 64) -> np.ndarray:
    from jzi.runtime.images import load_rgb, street_input

    out = []
    for i in range(0, len(photos), batch):
        imgs = np.stack([street_input(load_rgb(p), loc.image_size) for p in photos[i:i + batch]])
        out.append(loc.backend.encode_street(imgs))
    return np.concatenate(out)


def beam_candidates(loc, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N, BEAMS, S] candidate paths, best first; [N, BEAMS] their scores)."""
    res = loc.zoom(query, beams=BEAMS)
    return (np.array([[c.path for c in r.candidates] for r in res]),
            np.array([[c.score for c in r.candidates] for r in res]))


def suite_agreement(args, wd: Workdir) -> list[dict]:
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import build_store

    from .data import image_path, read_split
    from .onnx_export import decisive_rollouts

    if not (args.data and args.checkpoint):
        raise SystemExit("jzi-bench: error: the agreement suite needs --data WORLD (jzi-synth) and --checkpoint "
                         "(a model trained on it)")
    root, ckpt = Path(args.data), Path(args.checkpoint)
    fp32 = wd.bundle(ckpt, "fp32")
    store = wd.root / f"{ckpt.stem}-float32.jzt"
    if not (store / "tiles.json").exists():
        build_store(store, fp32, root / "satellite", threads=args.threads, dtype="float32", force=True, progress=False)
    base = Localizer(fp32, store, backend="ort-cpu", threads=args.threads)
    photos = [image_path(root, r.image_id) for split in ("test", "val", "train")
              for r in read_split(root, split, base.region, log=wd.log)]
    query = street_queries(base, photos)
    ref_paths, ref_logits = greedy_logits(base, query)
    ref_beams, ref_scores = beam_candidates(base, query)
    decisive = decisive_rollouts(ref_logits)
    beam_decisive = (-np.diff(ref_scores, axis=1) >= BEAM_GAP).all(axis=1)
    wd.log(f"agreement: {len(photos)} photos, {int(decisive.sum())} decisive fp32 rollouts, "
           f"{int(beam_decisive.sum())} decisive beam orderings")
    rows = []
    for label, precision, decoder in VARIANTS:
        loc = Localizer(wd.bundle(ckpt, precision, decoder), store, backend="ort-cpu", threads=args.threads)
        q = query if precision == "fp32" else street_queries(loc, photos)
        paths, logits = greedy_logits(loc, q)
        same = (paths == ref_paths).all(1)
        beams_same = (beam_candidates(loc, q)[0] == ref_beams).all((1, 2))
        greedy_gate = float(same[decisive].mean()) if decisive.any() else None
        beam_gate = float(beams_same[beam_decisive].mean()) if beam_decisive.any() else None
        rows.append({
            "variant": label, "photos": len(photos), "decisive": int(decisive.sum()),
            "beam_decisive": int(beam_decisive.sum()),
            "greedy_same_all": float(same.mean()), "greedy_same_decisive": greedy_gate,
            "beam_same_all": float(beams_same.mean()), "beam_same_decisive": beam_gate,
            "logits_max_abs": float(np.abs(logits - ref_logits)[same].max()) if same.any() else None,
            "gate": GATE, "passed": None if greedy_gate is None or beam_gate is None else
            bool(greedy_gate >= GATE and beam_gate >= GATE),
            "data": "synthetic"})
    return rows
