"""Inference backends behind one small interface.

A backend runs a bundle's three graphs:

    encode_views(uint8 [B, S, S, 3])    -> float32 [B, D]
    encode_street(uint8 [B, S, 2S, 3])  -> float32 [B, D]
    decoder(batch)                      -> a DecoderStep with preallocated buffers for that batch

A ``DecoderStep`` owns host buffers ``query``, ``view``, ``prev_action``, ``step`` (inputs the
zoom loop writes in place) and ``logits`` (the output it reads), plus the KV cache, which stays
inside the backend (host memory for ONNX Runtime on CPU, device memory on a GPU). ``run()``
executes one step; ``advance(parents)`` makes this step's ``present.*`` the next step's
``past_key_values.*``: a pointer swap for greedy decoding, a gather by beam parent for beams.

Backends: ``ort-cpu`` (ONNX Runtime, CPU provider), ``ort-cuda`` / ``ort-trt`` (ONNX Runtime's CUDA and
TensorRT providers, when onnxruntime-gpu is installed), ``tensorrt`` (native engines from the bundle).
``auto`` picks the fastest the bundle and the machine allow.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
GRAPHS = ("view_encoder", "street_encoder", "decoder")


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here, with one line saying why."""


class ProviderFellBack(BackendUnavailable):
    """ONNX Runtime lists a GPU provider but could not start it (its CUDA or TensorRT libraries are missing) and
    fell back to a slower one: refused rather than run under the wrong name; ``auto`` goes on to the next."""


class DecoderStep(ABC):
    """One decoder step at a fixed batch size, with every buffer allocated once."""

    def __init__(self, manifest: dict, batch: int):
        width, n_actions = int(manifest["width"]), int(manifest["n_actions"])
        dec = manifest["decoder"]
        self.batch = batch
        self.layers = int(dec["layers"])
        self.cache_shape = (batch, int(dec["heads"]), int(dec["cache_len"]), int(dec["head_dim"]))
        self.query = np.zeros((batch, width), np.float32)
        self.view = np.zeros((batch, width), np.float32)
        self.prev_action = np.zeros(batch, np.int64)
        self.step = np.zeros((), np.int64)
        self.logits = np.zeros((batch, n_actions), np.float32)

    @abstractmethod
    def reset(self) -> None:
        """Clear the KV cache before a new query (unwritten rows must not hold NaN garbage)."""

    @abstractmethod
    def run(self) -> np.ndarray:
        """Run one step on the current inputs; returns ``self.logits`` [batch, A]."""

    @abstractmethod
    def advance(self, parents: np.ndarray | None = None) -> None:
        """present -> past; with ``parents`` [batch] (beam search) row b of past becomes row parents[b]."""


class Backend(ABC):
    name: str = ""

    def __init__(self, bundle_dir, manifest: dict):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self._decoders: dict[int, DecoderStep] = {}

    @abstractmethod
    def encode_views(self, images: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def encode_street(self, images: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _new_decoder(self, batch: int) -> DecoderStep: ...

    def decoder(self, batch: int) -> DecoderStep:
        """The DecoderStep for ``batch`` rows, created once and reused for every later query."""
        if batch not in self._decoders:
            self._decoders[batch] = self._new_decoder(batch)
        return self._decoders[batch]

    def describe(self) -> str:
        return self.name


def graph_path(bundle_dir, manifest: dict, role: str) -> Path:
    return Path(bundle_dir) / manifest["files"][role]["path"]


def tensor_names(manifest: dict, graph: str) -> tuple[list[str], list[str]]:
    spec = manifest["tensors"][graph]
    return [t["name"] for t in spec["inputs"]], [t["name"] for t in spec["outputs"]]


def engine_roles(manifest: dict) -> dict[str, str] | None:
    """Bundle file roles (``{graph}_engine``, written by jzi-export --trt) of the three TensorRT engines,
    or None when the bundle has none."""
    files = manifest.get("files", {})
    roles = {graph: f"{graph}_engine" for graph in ("view_encoder", "street_encoder", "decoder")}
    return roles if all(role in files for role in roles.values()) else None


def available_backends(manifest: dict) -> dict[str, str]:
    """{backend: "ok" or why not} for every backend, best first."""
    status = {}
    try:
        from . import tensorrt as trt_backend

        status["tensorrt"] = trt_backend.availability(manifest)
    except ImportError as e:  # pragma: no cover - the module itself imports nothing optional
        status["tensorrt"] = str(e)
    from . import onnxrt

    providers = onnxrt.providers_available()
    status["ort-trt"] = "ok" if "TensorrtExecutionProvider" in providers else "onnxruntime-gpu with TensorRT not installed"
    status["ort-cuda"] = "ok" if "CUDAExecutionProvider" in providers else "onnxruntime-gpu not installed"
    status["ort-cpu"] = "ok"
    return status


def open_backend(bundle_dir, manifest: dict, backend: str = "auto", threads: int | None = None,
                 graphs=GRAPHS) -> Backend:
    """The named backend, or with ``auto`` the first that works of tensorrt, ort-trt, ort-cuda, ort-cpu.

    ``graphs`` are loaded now (localizing needs no view encoder, building a store only needs it);
    any other graph is loaded on first use.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    status = available_backends(manifest)
    if backend != "auto":
        if status[backend] != "ok":
            raise BackendUnavailable(f"{backend} backend not available: {status[backend]}")
        return _open(backend, bundle_dir, manifest, threads, graphs)
    candidates = [name for name, why in status.items() if why == "ok"]
    for name in candidates[:-1]:
        try:
            return _open(name, bundle_dir, manifest, threads, graphs)
        except ProviderFellBack:
            continue
    return _open(candidates[-1], bundle_dir, manifest, threads, graphs)


def _open(backend: str, bundle_dir, manifest: dict, threads, graphs) -> Backend:
    if backend == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(bundle_dir, manifest, graphs=graphs)
    from .onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle_dir, manifest, device=backend.split("-", 1)[1], threads=threads, graphs=graphs)
