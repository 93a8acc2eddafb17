"""Artifacts every benchmark suite shares: random-weight checkpoints, bundles, stores and photos, made once."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

CELL_M = 39.0625  # the terminal cell of the authors' 10 km / 4-step region

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

    def bundle(self, checkpoint: Path, precision: str, decoder_precision: str = "fp32") -> Path:
        out = self.root / (f"{checkpoint.stem}-{precision}" + ("" if decoder_precision == "fp32" else
                                                               f"-{decoder_precision}dec"))
        if not (out / "manifest.json").exists():
            from .onnx_export import ParitySettings, export_bundle

            self.log(f"exporting {checkpoint.name} ({precision}, {decoder_precision} decoder) ...")
            export_bundle(checkpoint, out, precision=precision, force=True, threads=self.threads,
                          decoder_precision=decoder_precision,
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
