"""jzi's C++ runtime from Python: the same Localizer API and result objects as ``jzi.runtime.localizer``.

    from jzi.native import Localizer
    loc = Localizer("bundle/", "region.jzt")             # backend="auto", threads=None
    r = loc.localize("photo.jpg")                         # a jzi.runtime.localizer.Localization
    r = loc.localize("photo.jpg", beams=4)                # r.candidates: the top 4 cells

Built from ``cpp_bindings/`` (``make native`` or ``pip install ./cpp_bindings``). Errors are the
Python runtime's own types (BundleError, TileStoreError, ImageError, LocalizerError, BackendUnavailable).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from jzi.runtime.localizer import Candidate, Localization

from . import _native

TileStore = _native.TileStore
load_manifest = _native.load_manifest
decode_image = _native.decode_image
read_image = _native.read_image
header_size = _native.header_size
street_input = _native.street_input
available_backends = _native.available_backends


_HERE = Path(__file__).resolve().parent


def _find(*names: str) -> Path:
    """A file installed beside this module (pip) or, in a CMake build tree, two folders up."""
    for folder in (_HERE, _HERE.parents[2]):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"{names[0]} is not installed beside jzi.native ({_HERE})")


def library_path() -> Path:
    """libjzi (the C API of include/jzi/jzi.h), e.g. for ctypes.CDLL."""
    return _find("libjzi.so.0", "libjzi.so")


def cli_path() -> Path:
    """The jzi-run-native program."""
    return _find("jzi-run-native")


def run_cli() -> None:
    """Console entry point: replace this process with jzi-run-native (same arguments)."""
    exe = str(cli_path())
    os.execv(exe, [exe, *sys.argv[1:]])


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
