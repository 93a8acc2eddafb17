"""``make demo``: from nothing to localized photos on a plain CPU, in a few minutes.

    python -m jzi.export.demo [--out demo-out] [--street-epochs 12] [--epochs 15] [--world default] [--default-world] [--fresh]

1. a synthetic world over the default 10 km region with train/val/test street photos (jzi-synth;
   its --easy variant unless --default-world: the same city, photographed as clean full panoramas),
2. the tiny model trained on it with jzi-train's CPU recipe for a fixed number of epochs (seeded, so
   two runs give the same model however busy the machine is; without augmentation on the easy world),
   or the one an earlier run left,
3. exported to a model bundle (jzi-export),
4. every satellite view encoded into a tile store, with small thumbnails for pictures (jzi-tiles),
5. the held-out test photos localized by the torch-free runtime (jzi-run's Localizer): a short
   table against chance (R@40/50/100m, first step right, median error, confidence), every answer
   in answers.csv, one picture of a zoom path, and the commands to try next.

Every step reuses what an earlier run left in ``--out``, so a second ``make demo`` is quick.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jzi.runtime.extras import install_hint, missing_extras


def _same_world(world: Path, cfg) -> bool:
    """Whether an earlier run left this very world (version and settings); any other is made again."""
    import json
    from dataclasses import asdict

    from jzi.export.synthetic import WORLD_VERSION

    try:
        info = json.loads((world / "world.json").read_text())
        return info.get("version") == WORLD_VERSION and info.get("config") == json.loads(json.dumps(asdict(cfg)))
    except (OSError, ValueError, AttributeError):
        return False


def _step(n: int, text: str) -> float:
    print(f"\n== [{n}/5] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "done") -> None:
    print(f"   {what} in {time.perf_counter() - t0:.1f} s", flush=True)


# peak learning rate of the demo's training: 2e-3 beat the recipe's 1e-3 on the easy world (R@100m 37.0 % vs
# 33.2 % after 8 street epochs; benchmarks/RESULTS.md, "make demo")
DEMO_LR = 2e-3


def run(out: Path, street_epochs: int, epochs: int, world_size: str, easy: bool, fresh: bool,
        threads: int | None) -> int:
    from jzi.export.onnx_export import export_bundle
    from jzi.export.synthetic import SIZES, WorldConfig, easy_config, make_world
    from jzi.export.train import main as train_main
    from jzi.runtime.tiles import build_store

    world, train_dir, bundle, store = out / "world", out / "train", out / "bundle", out / "region.jzt"
    viz = out / "zoom_path.png"
    start = time.perf_counter()

    cfg = WorldConfig(sizes=SIZES[world_size])
    cfg = easy_config(cfg) if easy else cfg
    t = _step(1, f"synthetic world ({world_size}{', easy' if easy else ''}: {SIZES[world_size][0]} train / "
                 f"{SIZES[world_size][2]} test photos)")
    if world.is_dir() and not fresh and _same_world(world, cfg):
        print(f"   reusing {world}")
    else:
        make_world(world, cfg, overwrite=True, log=lambda s: print("   " + s))
    _done(t)

    t = _step(2, f"train the tiny model (CPU recipe: {street_epochs} epochs street phase, {epochs} epochs zoom decoder)")
    best, last = train_dir / "best.pt", train_dir / "last.pt"
    world_made = (world / "world.json").stat().st_mtime  # a checkpoint older than the world is not its model
    if best.is_file() and not fresh and best.stat().st_mtime >= world_made:
        print(f"   reusing {best}")
    else:
        # jzi-train's CPU recipe: the encoder learns from street photos first, then the zoom decoder on its embeddings
        argv = [str(world), "--out", str(train_dir), "--preset", "tiny", "--recipe", "cpu", "--street-epochs",
                str(street_epochs), "--epochs", str(epochs), "--lr", str(DEMO_LR), "--seed", "0", "--quiet"]
        if easy:  # clean photos, and few steps: augmentation slows the block step (RESULTS.md, "make demo")
            argv.append("--no-augment")
        if threads:
            argv += ["--threads", str(threads)]
        if last.is_file() and not fresh and last.stat().st_mtime >= world_made:
            argv.append("--resume")  # an interrupted demo continues its training
        if train_main(argv) != 0 or not best.is_file():
            print("demo: training failed (see above)", file=sys.stderr)
            return 1
    _done(t)

    t = _step(3, "export the model bundle (ONNX, fp32, parity-checked against PyTorch)")
    if (bundle / "manifest.json").is_file() and not fresh and bundle.stat().st_mtime >= best.stat().st_mtime:
        print(f"   reusing {bundle}")
    else:
        export_bundle(best, bundle, precision="fp32", force=True, threads=threads, log=lambda s: print("   " + s))
    _done(t)

    t = _step(4, "encode every satellite view into a tile store")
    if (store / "tiles.json").is_file() and not fresh and store.stat().st_mtime >= (bundle / "manifest.json").stat().st_mtime:
        print(f"   reusing {store}")
    else:
        build_store(store, bundle, world / "satellite", dtype="float16", thumb_px=64, batch=256, threads=threads,
                    force=True)
    _done(t)

    t = _step(5, "localize the held-out test photos with the torch-free runtime (jzi-run's Localizer)")
    rows, region = localize_split(bundle, store, world, viz, threads)
    answers = write_answers(rows, out / "answers.csv")
    _done(t)
    kind = "easy synthetic world (clean full panoramas)" if easy else "synthetic world"
    print(report(rows, region, chance_levels(region, [r["truth"] for r in rows]), kind))
    print(next_steps(out, world, train_dir, bundle, store, viz, answers, time.perf_counter() - start))
    return 0


# ---- the report: a short table on screen, one line per photo in a file ------------------------------------
def localize_split(bundle: Path, store: Path, world: Path, viz: Path, threads: int | None):
    """Every test photo through the runtime: one dict per photo, and the zoom path of the first drawn to ``viz``."""
    from jzi.runtime.geometry import distance_m
    from jzi.runtime.imagery import open_source
    from jzi.runtime.images import load_rgb
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.run_cli import gather
    from jzi.runtime.viz import draw_zoom, save_rgb, view_images

    problems: list[str] = []
    queries = gather([str(world / "metadata" / "test.csv")], problems)
    if problems:
        raise ValueError(problems[0])
    loc = Localizer(bundle, store, threads=threads)
    rows, photos = [], [load_rgb(q.path) for q in queries]
    for i in range(0, len(queries), 8):
        for q, r in zip(queries[i:i + 8], loc.localize_batch(photos[i:i + 8])):
            rows.append({"image": Path(q.label).name, "truth": q.truth, "answer": (r.latitude, r.longitude),
                         "error_m": float(distance_m([r.latitude, r.longitude], q.truth)), "path": r.path,
                         "true_path": loc.region.ground_truth_path(q.truth).tolist(),
                         "confidence": r.confidence, "step_probs": r.step_probs})
    # the picture shows how a right answer is found: the first test photo answered within 100 m, if any
    hits = [i for i, r in enumerate(rows) if r["error_m"] <= 100]
    pick = hits[0] if hits else 0
    shown = rows[pick]
    views = view_images(loc.region, shown["path"], source=open_source(world / "satellite"))
    which = "first test photo answered within 100 m" if hits else "first test photo"
    caption = (f"{shown['image']} ({which}): answer {shown['answer'][0]:.6f}, {shown['answer'][1]:.6f}; truth "
               f"{shown['truth'][0]:.6f}, {shown['truth'][1]:.6f}; error {shown['error_m']:.0f} m (synthetic world)")
    save_rgb(viz, draw_zoom(photos[pick], views, loc.region, shown["path"], shown["step_probs"], shown["truth"], caption))
    return rows, loc.region


def write_answers(rows: list[dict], path: Path) -> Path:
    """One CSV line per photo (written to a temporary name, then renamed)."""
    import csv
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "latitude", "longitude", "true_latitude", "true_longitude", "error_m", "confidence",
                    "path", "true_path", "steps_right"])
        for r in rows:
            right = next((k for k, (a, b) in enumerate(zip(r["path"], r["true_path"])) if a != b), len(r["path"]))
            w.writerow([r["image"], f"{r['answer'][0]:.7f}", f"{r['answer'][1]:.7f}", f"{r['truth'][0]:.7f}",
                        f"{r['truth'][1]:.7f}", f"{r['error_m']:.1f}", f"{r['confidence']:.4g}",
                        " ".join(map(str, r["path"])), " ".join(map(str, r["true_path"])), right])
    os.replace(tmp, path)
    return path


def chance_levels(region, truths) -> dict:
    """What answering with a random final cell would score on these truths (exact, over all cells)."""
    import numpy as np

    from jzi.runtime.geometry import distance_m
    from jzi.runtime.run_cli import RECALL_M

    cells = region.grid ** 2
    every = np.stack(np.unravel_index(np.arange(cells ** region.steps), (cells,) * region.steps), -1)
    centres = region.path_center(every)  # [cells ** steps, 2]
    d = np.stack([distance_m(centres, np.asarray(t, np.float64)).astype(np.float32) for t in truths])
    out = {f"R@{m}m": float((d <= m).mean()) for m in RECALL_M}
    out.update(first=1 / cells, strict=1 / cells ** region.steps, median_error_m=float(np.median(d)),
               confidence=1 / cells ** region.steps)
    return out


def _pct(v: float) -> str:
    """A share as a percentage; small ones (chance levels) with enough digits to be non-zero."""
    return f"{100 * v:.1f} %" if v >= 0.001 or v == 0 else f"{100 * v:.3f} %"


def report(rows: list[dict], region, chance: dict, world: str = "synthetic world") -> str:
    """The summary table and what its numbers mean."""
    import numpy as np

    from jzi.runtime.run_cli import RECALL_M

    err = np.array([r["error_m"] for r in rows])
    paths, true = np.array([r["path"] for r in rows]), np.array([r["true_path"] for r in rows])
    steps, cell = region.steps, float(region.level_size_m(region.steps - 1)) / region.grid
    lines = [f"\nResults on {len(rows)} held-out test photos of the {world} (a tiny model trained on this CPU):",
             f"   {'':<34}{'this model':>12}{'chance':>12}"]
    for m in RECALL_M:
        lines.append(f"   {f'answer within {m} m (R@{m}m)':<34}{_pct(float((err <= m).mean())):>12}"
                     f"{_pct(chance[f'R@{m}m']):>12}")
    lines.append(f"   {f'first step right (1 of {region.grid ** 2} cells)':<34}"
                 f"{_pct(float((paths[:, 0] == true[:, 0]).mean())):>12}{_pct(chance['first']):>12}")
    lines.append(f"   {f'all {steps} steps right':<34}{_pct(float((paths == true).all(1).mean())):>12}"
                 f"{_pct(chance['strict']):>12}")
    median, chance_median = f"{np.median(err):.0f} m", f"{chance['median_error_m']:.0f} m"
    lines.append(f"   {'median error':<34}{median:>12}{chance_median:>12}")
    lines.append(f"   {'median confidence':<34}{np.median([r['confidence'] for r in rows]):>12.2g}"
                 f"{chance['confidence']:>12.2g}")
    lines.append(
        f"\nEach answer is the centre of the {cell:g} m cell reached by {steps} zoom steps over the "
        f"{region.size_m / 1000:g} km region, so\na fully right path is at most {cell / np.sqrt(2):.0f} m off. "
        f"'Chance' is what answering with a random cell scores.\nConfidence is the model's probability for its "
        f"whole path (the product of its {steps} step probabilities;\n{chance['confidence']:.2g} for a uniform guess), "
        "a ranking signal rather than a probability of being within X m.\nSynthetic imagery and a few minutes of CPU "
        "training: these figures say nothing about real photos.")
    return "\n".join(lines)


def _command(name: str) -> str:
    """How to call a jzi command from here: the one beside this Python (make's .venv) if not on PATH."""
    import os
    import shutil

    beside = Path(sys.executable).parent / name
    if shutil.which(name) == str(beside) or not beside.exists():
        return name
    return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)


def next_steps(out, world, train_dir, bundle, store, viz, answers, seconds: float) -> str:
    run = f"{_command('jzi-run')} --engine {bundle} --tiles {store}"
    photo = next(iter(sorted((world / "streetview" / "images").glob("test_*.jpg"))), "PHOTO.jpg")
    return (f"\nEvery photo's answer, error and path: {answers}\n"
            f"Picture of a zoom path (the first test photo answered within 100 m): {viz}\n"
            f"Artifacts in {out}/: world/ (imagery and photos), {train_dir.name}/best.pt (checkpoint), "
            f"{bundle.name}/ (ONNX bundle), {store.name} (tile store)\n"
            f"\ndemo finished in {seconds:.0f} s. Next, try:\n"
            f"   {run} {photo}\n"
            f"   {run} {photo} --beams 4            # the 4 best cells\n"
            f"   {run} {photo} --viz path.png --source {world / 'satellite'}   # draw its zoom path")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jzi.export.demo", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--out", default="demo-out", help="working folder (default demo-out)")
    p.add_argument("--street-epochs", type=int, default=12, help="epochs of the street phase (default %(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the zoom decoder (default %(default)s)")
    p.add_argument("--world", choices=("tiny", "small", "default"), default="default",
                   help="world size (default %(default)s: 6000 training photos)")
    p.add_argument("--default-world", action="store_true", help="the benchmark world instead of jzi-synth's --easy "
                   "one (the same city photographed as clean full panoramas, which the demo uses to show the method "
                   "working within minutes)")
    p.add_argument("--threads", type=int, help="CPU threads for training and inference (default: all cores)")
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing earlier results")
    a = p.parse_args(argv)
    missing = missing_extras("torch", "geo")
    if missing:
        print(install_hint("demo", missing), file=sys.stderr)
        return 1
    if a.street_epochs < 1 or a.epochs < 1:
        p.error("--street-epochs and --epochs must be >= 1")
    try:
        return run(Path(a.out), a.street_epochs, a.epochs, a.world, not a.default_world, a.fresh, a.threads)
    except KeyboardInterrupt:
        print("demo: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
