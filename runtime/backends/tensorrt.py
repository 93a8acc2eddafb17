"""Native TensorRT backend: the bundle's serialized engines, the named-tensor API, one CUDA stream.

- Engines are TensorRT 10/11 plans that ``jzi-export --trt`` built on this device; inputs and
  outputs are addressed by name (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
- CUDA memory, copies, streams and graphs go through cuda-python (``cuda.bindings.runtime``);
  pycuda has no CUDA-graph capture, which the decoder step needs.
- The decoder step has static shapes for a given batch, so it is captured as a CUDA graph
  (host-to-device copies of the step inputs, the engine, the copy of the logits back) twice:
  once per direction of the KV-cache swap. Greedy decoding then costs one graph launch per step
  and a parity flip; beam search gathers cache rows with device-to-device copies.

Nothing here is imported unless this backend is asked for; without tensorrt, cuda-python or a
GPU, ``availability`` returns the one-line reason instead.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..bundle import check_graph_io, past_names, present_names
from . import GRAPHS, Backend, BackendUnavailable, DecoderStep, engine_roles, graph_path


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def availability(manifest: dict) -> str:
    """"ok", or one line saying why the native TensorRT backend cannot run here."""
    if engine_roles(manifest) is None:
        return "the bundle has no TensorRT engines (build them on this device: jzi-export --trt-only BUNDLE)"
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"the tensorrt Python package is not installed ({e})"
    try:
        cudart = _cudart()
    except ImportError as e:
        return f"cuda-python is not installed ({e})"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return "no CUDA GPU is visible"
    return "ok"


class _Cuda:
    """The few CUDA runtime calls we need, each raising one clear error."""

    def __init__(self):
        self.rt = _cudart()
        self.stream = self.call(self.rt.cudaStreamCreate)
        self.handle = int(self.stream)  # what TensorRT's execute_async_v3 takes
        self.H2D = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.D2H = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.D2D = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice

    def call(self, fn, *args):
        err, *out = fn(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendUnavailable(f"CUDA call {fn.__name__} failed: {err}")
        return out[0] if len(out) == 1 else (tuple(out) if out else None)

    def malloc(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc, max(int(nbytes), 1)))

    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array (needed for copies captured in a CUDA graph)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = int(self.call(self.rt.cudaMallocHost, max(nbytes, 1)))
        raw = (ctypes.c_char * max(nbytes, 1)).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        arr[...] = 0
        return arr

    def copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        self.call(self.rt.cudaMemcpyAsync, dst, src, nbytes, kind, self.stream)

    def sync(self) -> None:
        self.call(self.rt.cudaStreamSynchronize, self.stream)


class _Engine:
    def __init__(self, trt, runtime, path):
        data = path.read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot deserialize it (built by another TensorRT version "
                                     "or for another GPU? rebuild with jzi-export --trt-only)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        first = self.inputs[0]
        self.max_batch = int(self.engine.get_tensor_profile_shape(first, 0)[2][0])


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle_dir, manifest: dict, graphs=GRAPHS):
        super().__init__(bundle_dir, manifest)
        why = availability(manifest)
        if why != "ok":
            raise BackendUnavailable(f"TensorRT backend not available: {why}")
        import tensorrt as trt

        self.trt = trt
        self.cuda = _Cuda()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self._roles = engine_roles(manifest)
        self.engines: dict[str, _Engine] = {}
        self._enc_ctx = {}
        self._enc_buf: dict[str, tuple[int, int, int]] = {}  # graph -> (input ptr, output ptr, capacity)
        for graph in graphs:  # the graphs asked for now; any other is loaded on first use
            self.engine(graph)

    def engine(self, graph: str) -> _Engine:
        if graph not in self.engines:
            path = graph_path(self.bundle_dir, self.manifest, self._roles[graph])
            eng = _Engine(self.trt, self.runtime, path)
            shape = eng.engine.get_tensor_shape  # -1 marks a dynamic axis
            check_graph_io(self.manifest, graph, [(n, list(shape(n)), eng.dtypes[n].name) for n in eng.inputs],
                           [(n, list(shape(n)), eng.dtypes[n].name) for n in eng.outputs], path)
            self.engines[graph] = eng
            if graph != "decoder":
                self._enc_ctx[graph] = self.engines[graph].engine.create_execution_context()
        return self.engines[graph]

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__}"

    def _encode(self, graph: str, images: np.ndarray) -> np.ndarray:
        eng = self.engine(graph)
        ctx, cuda = self._enc_ctx[graph], self.cuda
        (inp,), (out,) = eng.inputs, eng.outputs
        images = np.ascontiguousarray(images, dtype=np.uint8)
        width = int(self.manifest["width"])
        per_in = images[0].nbytes if len(images) else 0
        per_out = width * eng.dtypes[out].itemsize
        cap = min(eng.max_batch, len(images))
        if graph not in self._enc_buf or self._enc_buf[graph][2] < cap:
            self._enc_buf[graph] = (cuda.malloc(per_in * cap), cuda.malloc(per_out * cap), cap)
        d_in, d_out, _ = self._enc_buf[graph]
        result = np.empty((len(images), width), eng.dtypes[out])
        for start in range(0, len(images), cap):
            chunk = images[start:start + cap]
            n = len(chunk)
            ctx.set_input_shape(inp, chunk.shape)
            ctx.set_tensor_address(inp, d_in)
            ctx.set_tensor_address(out, d_out)
            cuda.copy(d_in, chunk.ctypes.data, chunk.nbytes, cuda.H2D)
            if not ctx.execute_async_v3(cuda.handle):
                raise BackendUnavailable(f"TensorRT failed to run the {graph} engine")
            cuda.copy(result[start:start + n].ctypes.data, d_out, n * per_out, cuda.D2H)
            cuda.sync()
        return result.astype(np.float32, copy=False)

    def encode_views(self, images: np.ndarray) -> np.ndarray:
        return self._encode("view_encoder", images)

    def encode_street(self, images: np.ndarray) -> np.ndarray:
        return self._encode("street_encoder", images)

    def _new_decoder(self, batch: int) -> DecoderStep:
        eng = self.engine("decoder")
        if batch > eng.max_batch:
            raise BackendUnavailable(f"the decoder engine takes at most {eng.max_batch} rows (beams x queries), "
                                     f"{batch} asked; rebuild it with a larger profile")
        return TrtDecoderStep(self, batch)


class TrtDecoderStep(DecoderStep):
    """Pinned host inputs, device KV cache in two sets, one captured CUDA graph per swap direction."""

    def __init__(self, backend: TensorRTBackend, batch: int):
        super().__init__(backend.manifest, batch)
        cuda = self.cuda = backend.cuda
        self.ctx = backend.engine("decoder").engine.create_execution_context()
        # host side: page-locked copies of the buffers the zoom loop writes and reads
        self.query = cuda.pinned(self.query.shape, np.float32)
        self.view = cuda.pinned(self.view.shape, np.float32)
        self.prev_action = cuda.pinned(self.prev_action.shape, np.int64)
        self.step = cuda.pinned((), np.int64)
        self.logits = cuda.pinned(self.logits.shape, np.float32)
        self.small = [("query", self.query), ("view", self.view), ("prev_action", self.prev_action), ("step", self.step)]
        self.d_small = {name: cuda.malloc(arr.nbytes) for name, arr in self.small}
        self.d_logits = cuda.malloc(self.logits.nbytes)
        self.cache_bytes = int(np.prod(self.cache_shape)) * 4
        self.row_bytes = self.cache_bytes // batch
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        self.sets = [[cuda.malloc(self.cache_bytes) for _ in self.past_names] for _ in range(2)]
        self.parity = 0  # past = sets[parity], present = sets[1 - parity]
        for name, arr in self.small:
            self.ctx.set_input_shape(name, arr.shape)
        for name in self.past_names:
            self.ctx.set_input_shape(name, self.cache_shape)
        self.graphs = [self._capture(p) for p in (0, 1)]

    def _bind(self, parity: int) -> None:
        for name, _ in self.small:
            self.ctx.set_tensor_address(name, self.d_small[name])
        self.ctx.set_tensor_address("logits", self.d_logits)
        for name, ptr in zip(self.past_names, self.sets[parity]):
            self.ctx.set_tensor_address(name, ptr)
        for name, ptr in zip(self.present_names, self.sets[1 - parity]):
            self.ctx.set_tensor_address(name, ptr)

    def _enqueue(self) -> None:
        cuda = self.cuda
        for name, arr in self.small:
            cuda.copy(self.d_small[name], arr.ctypes.data, arr.nbytes, cuda.H2D)
        if not self.ctx.execute_async_v3(cuda.handle):
            raise BackendUnavailable("TensorRT failed to run the decoder engine")
        cuda.copy(self.logits.ctypes.data, self.d_logits, self.logits.nbytes, cuda.D2H)

    def _capture(self, parity: int):
        """A CUDA graph of one step for this swap direction; None if capture is unsupported (plain enqueue then)."""
        cuda, rt = self.cuda, self.cuda.rt
        self._bind(parity)
        self.reset_parity(parity)
        self._enqueue()  # first run outside capture: TensorRT finishes its lazy setup here
        cuda.sync()
        try:
            cuda.call(rt.cudaStreamBeginCapture, cuda.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            try:
                self._enqueue()
            finally:
                graph = cuda.call(rt.cudaStreamEndCapture, cuda.stream)
            return cuda.call(rt.cudaGraphInstantiate, graph, 0)
        except BackendUnavailable:
            return None

    def reset_parity(self, parity: int) -> None:
        for ptr in self.sets[parity]:
            self.cuda.call(self.cuda.rt.cudaMemsetAsync, ptr, 0, self.cache_bytes, self.cuda.stream)

    def reset(self) -> None:
        self.reset_parity(self.parity)

    def run(self) -> np.ndarray:
        cuda = self.cuda
        graph = self.graphs[self.parity]
        if graph is not None:
            cuda.call(cuda.rt.cudaGraphLaunch, graph, cuda.stream)
        else:
            self._bind(self.parity)
            self._enqueue()
        cuda.sync()
        return self.logits

    def advance(self, parents=None) -> None:
        if parents is None:
            self.parity ^= 1
            return
        cuda, rb = self.cuda, self.row_bytes
        for src, dst in zip(self.sets[1 - self.parity], self.sets[self.parity]):
            for row, parent in enumerate(parents):
                cuda.copy(dst + row * rb, src + int(parent) * rb, rb, cuda.D2D)
        cuda.sync()
