"""jzi's C++ runtime from Python: the same Localizer API and result objects as ``jzi.runtime.localizer``.

    from jzi.native import Localizer
    loc = Localizer("bundle/", "region.jzt")             # backend="auto", threads=None
    r = loc.localize("photo.jpg")                         # a jzi.runtime.localizer.Localization
    r = loc.localize("photo.jpg", beams=4)                # r.candidates: the top 4 cells

Built from ``cpp_bindings/`` (``make native`` or ``pip install ./cpp_bindings``). Errors are the
Python runtime's own types (BundleError, TileStoreError, ImageError, LocalizerError, BackendUnavailable).
"""
from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path


def _load_onnxruntime() -> None:
    """Load the onnxruntime wheel's libonnxruntime.so first, so that the module's link to it resolves."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise ImportError("jzi.native needs the onnxruntime package (pip install onnxruntime)")
    libs = sorted(p for p in (Path(spec.origin).parent / "capi").glob("libonnxruntime.so*") if "providers" not in p.name)
    if libs:
        ctypes.CDLL(str(libs[0]), mode=ctypes.RTLD_GLOBAL)


_load_onnxruntime()

from . import _native  # noqa: E402
from jzi.runtime.localizer import Candidate, Localization  # noqa: E402

TileStore = _native.TileStore
load_manifest = _native.load_manifest
decode_image = _native.decode_image
read_image = _native.read_image
street_input = _native.street_input
available_backends = _native.available_backends


def _localization(d: dict) -> Localization:
    cands = [Candidate(**c) for c in d.pop("candidates")]
    return Localization(candidates=cands, **d)


class _BackendInfo:
    def __init__(self, native):
        self._native = native

    def describe(self) -> str:
        return self._native.backend_describe()


class Localizer:
    """The C++ zoom loop: same constructor, ``localize`` / ``localize_batch`` / ``zoom`` and results."""

    def __init__(self, bundle, tiles, backend: str = "auto", threads: int | None = None, verify_bundle: bool = True):
        self._native = _native.Localizer(str(bundle), str(tiles), backend, int(threads or 0), bool(verify_bundle))
        self._tiles = Path(tiles)
        self._store = None
        self.backend = _BackendInfo(self._native)
        self.image_size = self._native.image_size
        self.steps = self._native.steps
        self.n_actions = self._native.n_actions

    @property
    def store(self):
        """The tile store opened by the Python reader (for thumbnails and drawing; cheap: a memmap)."""
        if self._store is None:
            from jzi.runtime.tiles import TileStore as PyTileStore

            self._store = PyTileStore(self._tiles)
        return self._store

    @property
    def region(self):
        return self.store.region

    def localize(self, image, beams: int = 1) -> Localization:
        """One photo (a path, encoded bytes or an RGB array) -> its Localization."""
        return self.localize_batch([image], beams)[0]

    def localize_batch(self, images, beams: int = 1) -> list[Localization]:
        """Several photos in one encoder batch and one decoder batch (queries x beams rows)."""
        return [_localization(d) for d in self._native.localize_batch(list(images), int(beams))]

    def zoom(self, query, beams: int = 1) -> list[Localization]:
        """The decoder loop from street embeddings ``query`` [B, D]: one Localization per row."""
        return [_localization(d) for d in self._native.zoom(query, int(beams))]

    def describe(self) -> str:
        return self._native.describe()
