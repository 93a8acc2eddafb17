"""ONNX Runtime backend: CPU provider with explicit threads, CUDA and TensorRT providers with onnxruntime-gpu.

The decoder runs through IOBinding: inputs and outputs are bound once to preallocated buffers, the
zoom loop writes its inputs into those buffers in place, and the KV cache moves from ``present.*``
to ``past_key_values.*`` by switching between two bindings of two cache sets (no copy, no
rebinding) or, for beam search, by one gather per tensor into the past set.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..bundle import check_graph_io, past_names, present_names
from . import GRAPHS, Backend, BackendUnavailable, DecoderStep, ProviderFellBack, graph_path, tensor_names

# the provider each GPU device must get, not a fallback
GPU_PROVIDER = {"cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


def providers_available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_threads() -> int:
    """Cores this process may use: the right intra-op count for one query at a time."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(float16)": "float16", "tensor(float)": "float32"}


def _io(arg) -> tuple[str, list, str]:
    """An ORT NodeArg as (name, shape, numpy dtype name) for ``check_graph_io``."""
    return arg.name, list(arg.shape), _ORT_TYPES.get(arg.type, arg.type)


def _providers(device: str, manifest: dict):
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # ORT's TensorRT provider builds engines on first use; keep them in a per-user cache so that the
    # second run starts fast. fp16 kernels only when the bundle was exported for fp16.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jzi" / "ort-trt" / str(manifest["encoder_id"])[:16]
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                   "trt_timing_cache_enable": True, "trt_fp16_enable": manifest.get("precision") == "fp16"}
    return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    def __init__(self, bundle_dir, manifest: dict, device: str = "cpu", threads: int | None = None,
                 graphs=GRAPHS):
        super().__init__(bundle_dir, manifest)
        import onnxruntime as ort

        if device not in ("cpu", "cuda", "trt"):
            raise BackendUnavailable(f"unknown ONNX Runtime device {device!r}")
        self.device = device
        self.name = f"ort-{device}"
        self.threads = int(threads) if threads else default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
        self._opts, self._providers = opts, _providers(device, manifest)
        self.sessions = {}
        for graph in graphs:  # the graphs asked for now; any other is loaded on first use
            self.session(graph)
        self._io = {g: tensor_names(manifest, g) for g in ("view_encoder", "street_encoder")}

    def session(self, graph: str):
        if graph not in self.sessions:
            import onnxruntime as ort

            path = graph_path(self.bundle_dir, self.manifest, graph)
            try:
                self.sessions[graph] = ort.InferenceSession(str(path), sess_options=self._opts,
                                                            providers=self._providers)
            except Exception as e:  # ORT raises its own exception types for bad graphs
                raise BackendUnavailable(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
            sess = self.sessions[graph]
            wanted, used = GPU_PROVIDER.get(self.device), sess.get_providers()[0]
            if wanted and used != wanted:
                del self.sessions[graph]
                raise ProviderFellBack(f"{self.name} backend not available: ONNX Runtime could not start its "
                                       f"{wanted} (are its CUDA/TensorRT libraries installed?) and fell back to "
                                       f"{used}")
            try:
                check_graph_io(self.manifest, graph, [_io(a) for a in sess.get_inputs()],
                               [_io(a) for a in sess.get_outputs()], path)
            except Exception:
                del self.sessions[graph]
                raise
        return self.sessions[graph]

    def describe(self) -> str:
        used = next(iter(self.sessions.values())).get_providers()[0] if self.sessions else "no graph loaded"
        return f"{self.name} ({used}, {self.threads} threads)" if self.device == "cpu" else f"{self.name} ({used})"

    def _encode(self, graph: str, images: np.ndarray) -> np.ndarray:
        (inp,), (out,) = self._io[graph]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return self.session(graph).run([out], {inp: images})[0]

    def encode_views(self, images: np.ndarray) -> np.ndarray:
        return self._encode("view_encoder", images)

    def encode_street(self, images: np.ndarray) -> np.ndarray:
        return self._encode("street_encoder", images)

    def _new_decoder(self, batch: int) -> DecoderStep:
        cls = OrtCpuDecoderStep if self.device == "cpu" else OrtDeviceDecoderStep
        return cls(self.session("decoder"), self.manifest, batch)


class _TwoBindings(DecoderStep):
    """Two cache sets and two IOBindings, one per direction of the swap, each bound once.

    ``parity`` p: past = sets[p], present = sets[1 - p]. Greedy decoding flips ``parity`` (no copy,
    no rebinding); beam search gathers present rows into past and keeps ``parity``.
    """

    def __init__(self, session, manifest: dict, batch: int):
        super().__init__(manifest, batch)
        self.session = session
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        self.sets = [[self._new_cache() for _ in self.past_names] for _ in range(2)]
        self.bindings = [self._binding(p) for p in (0, 1)]
        self.parity = 0

    def _bind_step_inputs(self, binding) -> None:
        for name, arr in (("query", self.query), ("view", self.view), ("prev_action", self.prev_action),
                          ("step", self.step)):
            binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _binding(self, parity: int):
        b = self.session.io_binding()
        self._bind_step_inputs(b)
        b.bind_output("logits", "cpu", 0, self.logits.dtype, list(self.logits.shape), self.logits.ctypes.data)
        for name, buf in zip(self.past_names, self.sets[parity]):
            self._bind_cache_input(b, name, buf)
        for name, buf in zip(self.present_names, self.sets[1 - parity]):
            self._bind_cache_output(b, name, buf)
        return b

    @property
    def past(self):
        return self.sets[self.parity]

    @property
    def present(self):
        return self.sets[1 - self.parity]

    def advance(self, parents=None) -> None:
        if parents is None:
            self.parity ^= 1
        else:
            self._gather(parents)


class OrtCpuDecoderStep(_TwoBindings):
    """Host buffers bound by pointer; ORT reads and writes them in place."""

    def _new_cache(self):
        return np.zeros(self.cache_shape, np.float32)

    def _bind_cache_input(self, binding, name, arr):
        binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _bind_cache_output(self, binding, name, arr):
        binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def reset(self) -> None:
        for arr in self.past:
            arr.fill(0.0)

    def run(self) -> np.ndarray:
        self.session.run_with_iobinding(self.bindings[self.parity])
        return self.logits

    def _gather(self, parents) -> None:
        for src, dst in zip(self.present, self.past):
            np.take(src, parents, axis=0, out=dst, mode="clip")  # mode="clip": no hidden temporary


class OrtDeviceDecoderStep(_TwoBindings):
    """CUDA / TensorRT providers: the cache lives in device OrtValues; the small inputs are copied per step."""

    def _new_cache(self):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(list(self.cache_shape), np.float32, "cuda", 0)

    def _bind_cache_input(self, binding, name, val):
        binding.bind_ortvalue_input(name, val)

    def _bind_cache_output(self, binding, name, val):
        binding.bind_ortvalue_output(name, val)

    def reset(self) -> None:
        zeros = np.zeros(self.cache_shape, np.float32)
        for val in self.past:
            val.update_inplace(zeros)

    def run(self) -> np.ndarray:
        binding = self.bindings[self.parity]
        # ONNX Runtime copies a host input of a device session when it is bound (IOBinding::BindInput), not when
        # the step runs: bound once, the steps would not see their new inputs, the likely cause of ORT-CUDA's
        # greedy paths agreeing with the CPU's on 0 of 16 photos on an H200 (RESULTS.md, issue 14; not re-run on
        # a GPU since). Bound again before each run: four small copies.
        self._bind_step_inputs(binding)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return self.logits

    def _gather(self, parents) -> None:
        # OrtValue has no device gather; the cache is small (a few MB for 4 beams), so gather on the host.
        for src, dst in zip(self.present, self.past):
            dst.update_inplace(np.ascontiguousarray(np.take(src.numpy(), parents, axis=0)))
