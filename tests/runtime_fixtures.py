"""Shared, disk-cached artefacts for the runtime tests: a random-weight tiny bundle, a small GeoTIFF
over the default region, an fp32 tile store built from it (and its fp16 twin), and query photos.

Each builder writes under pytest's session base temp directory and reuses what is already there,
so the test modules that import these fixtures pay for each artefact once per session. Under pytest-xdist
(``make test`` runs two workers) the workers share that directory: the first to need an artefact builds it
while holding its file lock, the others wait for it and reuse it. The session's set (``rt_base``) is built
in a process of its own (``python tests/runtime_fixtures.py BASE``): building a model and exporting it
leaves a few hundred MB in the process that did it, which the test processes then do without.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from jzi.runtime.geometry import Region, move_en

SEED = 0
TIFF_PX = 1024
MARGIN_M = 400.0


def _smooth_noise(rng, px: int) -> np.ndarray:
    """Colourful structure at several scales, so that views at every level differ."""
    import cv2

    img = np.zeros((px, px, 3), np.float32)
    for cells, amp in ((4, 90), (16, 60), (64, 40), (256, 25)):
        small = rng.random((cells, cells, 3)).astype(np.float32)
        img += amp * cv2.resize(small, (px, px), interpolation=cv2.INTER_CUBIC)
    img -= img.min()
    return (255 * img / img.max()).astype(np.uint8)


@contextlib.contextmanager
def built_once(out: Path):
    """Held while an artefact is looked for and built: another xdist worker waits instead of building it too."""
    from filelock import FileLock

    with FileLock(f"{out}.lock"):
        yield


# The builders import torch only when they build: a test process that finds the artefact built never imports it.
def make_checkpoint(path: Path) -> Path:
    with built_once(path):
        if not path.exists():
            import torch

            from jzi.export.checkpoint import save_checkpoint
            from jzi.export.config import get_preset
            from jzi.export.model import JustZoomIn

            torch.manual_seed(SEED)
            save_checkpoint(JustZoomIn(get_preset("tiny")).eval(), path)
    return path


@contextlib.contextmanager
def shared_graph_exports(base: Path):
    """While active, export_bundle's graph exports of the seed-0 tiny model are done once per run.

    The dynamo export of a graph does not depend on the bundle's precision (every precision converts the
    same exported graph), and it is most of an export's time; the conversions, the parity checks against
    PyTorch and the manifest stay each bundle's own. Only for the session checkpoint (``make_checkpoint``),
    whose directory ``base`` keeps the exported graphs for every xdist worker."""
    import onnx

    from jzi.export import onnx_export as E

    def once(graph, export):
        def export_once(model, opset):
            path = base / f"exported_{graph}_opset{opset}.onnx"
            with built_once(path):
                if not path.exists():
                    tmp = path.with_name(f".{path.name}.tmp")
                    onnx.save(export(model, opset), tmp)
                    tmp.replace(path)
            return onnx.load(path)  # a fresh copy: conversions edit it in place
        return export_once

    with mock.patch.dict(E.EXPORTERS, {g: once(g, f) for g, f in E.EXPORTERS.items()}):
        yield


def make_bundle(base: Path, precision: str = "fp32") -> Path:
    out = base / f"bundle_{precision}"
    checkpoint = make_checkpoint(base / "tiny.pt")
    with built_once(out):
        if not out.exists():
            from jzi.export.onnx_export import export_bundle

            with shared_graph_exports(base):
                export_bundle(checkpoint, out, precision=precision, log=lambda *a, **k: None)
    return out


def make_geotiff(base: Path) -> Path:
    """An EPSG:4326 GeoTIFF covering the default region plus a margin."""
    path = base / "region.tif"
    with built_once(path):
        if not path.exists():
            _write_geotiff(path)
    return path


def _write_geotiff(path: Path) -> None:
    import rasterio
    from affine import Affine

    region = Region.default()
    half = region.size_m / 2 + MARGIN_M
    north = move_en(region.center, 0.0, half)[0]
    south = move_en(region.center, 0.0, -half)[0]
    east = move_en(region.center, half, 0.0)[1]
    west = move_en(region.center, -half, 0.0)[1]
    img = _smooth_noise(np.random.default_rng(SEED), TIFF_PX)
    tmp = path.with_name(".region.tif.tmp")
    with rasterio.open(tmp, "w", driver="GTiff", width=TIFF_PX, height=TIFF_PX, count=3, dtype="uint8",
                       crs="EPSG:4326",
                       transform=Affine((east - west) / TIFF_PX, 0.0, west, 0.0, -(north - south) / TIFF_PX, north)) as ds:
        ds.write(np.moveaxis(img, -1, 0))
    tmp.replace(path)


def make_store(base: Path, bundle: Path) -> Path:
    """The fp32 store of the bundle over the GeoTIFF, built from the imagery (in batches of 64 views: 512 took
    600 MB more peak memory for the same CPU time and the same bytes)."""
    from jzi.runtime.tiles import build_store

    out = base / "store_float32.jzt"
    geotiff = make_geotiff(base)
    with built_once(out):
        if not out.exists():
            build_store(out, bundle, geotiff, backend="ort-cpu", dtype="float32", batch=64, progress=False)
    return out


def make_fp16_store(base: Path, bundle: Path) -> Path:
    """The same embeddings rounded to fp16 (what a default fp16 build writes), without re-encoding."""
    from jzi.runtime.tiles import TileStore, write_store

    out = base / "store_float16.jzt"
    source = make_store(base, bundle)
    with built_once(out):
        if not out.exists():
            src = TileStore(source)
            write_store(out, src.region, src.dim, src.encoder_id, lambda rows: (src.embeddings[rows], None),
                        dtype="float16", batch=1 << 16, meta={"source": "fp32 store"}, progress=False)
    return out


def make_photos(base: Path, n: int, seed: int = 1) -> list[np.ndarray]:
    """Street-photo stand-ins: wide crops of the imagery around random places (uint8 RGB [96, 200, 3])."""
    from jzi.runtime.imagery import open_source

    src = open_source(make_geotiff(base))
    region = Region.default()
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(n):
        east, north = rng.uniform(-0.45, 0.45, size=2) * region.size_m
        centre = move_en(region.center, east, north)
        room = 2 * (region.size_m / 2 + MARGIN_M - max(abs(east), abs(north))) - 1  # stay inside the GeoTIFF
        view = src.render(centre, min(float(rng.uniform(150, 2500)), room), 100)
        photos.append(np.concatenate([view, view[:, ::-1]], axis=1)[: 96])
    return photos


def write_photos(folder: Path, base: Path, n: int, seed: int = 1) -> list[Path]:
    """``make_photos`` saved as JPEGs ``folder/p0000.jpg`` ... (reused when already there)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{i:04d}.jpg" for i in range(n)]
    with built_once(folder):
        if not all(p.exists() for p in paths):
            for path, photo in zip(paths, make_photos(base, n, seed)):
                cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return paths


def build_session_artifacts(base: Path) -> None:
    """The checkpoint, a bundle per precision, the GeoTIFF and both stores, in this process."""
    bundle = make_bundle(base, "fp32")
    for precision in ("int8", "fp16"):
        make_bundle(base, precision)
    make_fp16_store(base, bundle)


@pytest.fixture(scope="session")
def rt_base(tmp_path_factory) -> Path:
    """The directory of the session's shared artefacts: the run's, not one xdist worker's."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' base temp directories are siblings in the run's own
    base = base / "jzi_runtime"
    base.mkdir(exist_ok=True)
    done = base / "session_artifacts.done"
    with built_once(done):
        if not done.exists():
            r = subprocess.run([sys.executable, __file__, str(base)], capture_output=True, text=True)
            assert r.returncode == 0, f"building the session's artifacts failed:\n{r.stderr[-3000:]}"
            done.touch()
    return base


@pytest.fixture(scope="session")
def bundle(rt_base) -> Path:
    return make_bundle(rt_base)


@pytest.fixture(scope="session")
def geotiff(rt_base) -> Path:
    return make_geotiff(rt_base)


@pytest.fixture(scope="session")
def store32(rt_base, bundle) -> Path:
    return make_store(rt_base, bundle)


@pytest.fixture(scope="session")
def store16(rt_base, bundle) -> Path:
    return make_fp16_store(rt_base, bundle)


if __name__ == "__main__":
    build_session_artifacts(Path(sys.argv[1]))
