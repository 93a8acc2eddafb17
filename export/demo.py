"""``make demo``: from nothing to localized photos on a plain CPU, in a few minutes.

    python -m jzi.export.demo [--out demo-out] [--street-epochs 8] [--epochs 15] [--world default] [--fresh]

1. a synthetic world over the default 10 km region with train/val/test street photos (jzi-synth),
2. the tiny model trained on it with jzi-train's CPU recipe for a fixed number of epochs (seeded, so
   two runs give the same model however busy the machine is), or the one an earlier run left,
3. exported to a model bundle (jzi-export),
4. every satellite view encoded into a tile store, with small thumbnails for pictures (jzi-tiles),
5. the held-out test photos localized by the torch-free runtime (jzi-run): each answer with its
   error in metres, a R@40/50/100m summary, and one picture of a zoom path.

Every step reuses what an earlier run left in ``--out``, so a second ``make demo`` is quick.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jzi.runtime.extras import install_hint, missing_extras


def _step(n: int, text: str) -> float:
    print(f"\n== [{n}/5] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "done") -> None:
    print(f"   {what} in {time.perf_counter() - t0:.1f} s", flush=True)


def run(out: Path, street_epochs: int, epochs: int, world_size: str, fresh: bool, threads: int | None) -> int:
    from jzi.export.onnx_export import export_bundle
    from jzi.export.synthetic import SIZES, WorldConfig, make_world
    from jzi.export.train import main as train_main
    from jzi.runtime.run_cli import main as run_main
    from jzi.runtime.tiles import build_store

    world, train_dir, bundle, store = out / "world", out / "train", out / "bundle", out / "region.jzt"
    viz = out / "zoom_path.png"
    start = time.perf_counter()

    t = _step(1, f"synthetic world ({world_size}: {SIZES[world_size][0]} train / {SIZES[world_size][2]} test photos)")
    if world.is_dir() and not fresh:
        print(f"   reusing {world}")
    else:
        make_world(world, WorldConfig(sizes=SIZES[world_size]), overwrite=True, log=lambda s: print("   " + s))
    _done(t)

    t = _step(2, f"train the tiny model (CPU recipe: {street_epochs} epochs street phase, {epochs} epochs zoom decoder)")
    best = train_dir / "best.pt"
    if best.is_file() and not fresh:
        print(f"   reusing {best}")
    else:
        # jzi-train's CPU recipe: the encoder learns from street photos first, then the zoom decoder on its embeddings
        argv = [str(world), "--out", str(train_dir), "--preset", "tiny", "--recipe", "cpu", "--street-epochs",
                str(street_epochs), "--epochs", str(epochs), "--seed", "0", "--quiet"]
        if threads:
            argv += ["--threads", str(threads)]
        if (train_dir / "last.pt").is_file() and not fresh:
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

    t = _step(5, "localize the held-out test photos with the torch-free runtime (jzi-run)")
    argv = ["--engine", str(bundle), "--tiles", str(store), str(world / "metadata" / "test.csv"), "--viz", str(viz),
            "--batch", "8"]
    if threads:
        argv += ["--threads", str(threads)]
    rc = run_main(argv)
    _done(t)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Try it yourself:\n"
          f"   jzi-run --engine {bundle} --tiles {store} {world / 'streetview' / 'images'}/test_000000_undistorted.jpg"
          f" --beams 4\n   picture of a zoom path: {viz}")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jzi.export.demo", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--out", default="demo-out", help="working folder (default demo-out)")
    p.add_argument("--street-epochs", type=int, default=8, help="epochs of the street phase (default %(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the zoom decoder (default %(default)s)")
    p.add_argument("--world", choices=("tiny", "small", "default"), default="default",
                   help="world size (default %(default)s: 6000 training photos)")
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
        return run(Path(a.out), a.street_epochs, a.epochs, a.world, a.fresh, a.threads)
    except KeyboardInterrupt:
        print("demo: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
