"""TensorRT engines for a bundle, built on the target device with the TensorRT Python API.

Supports TensorRT 10 (JetPack 6) and 11. Every network is built *strongly typed*: the precision
comes from the ONNX graphs themselves (an fp16 bundle has fp16 encoders baked in), which is the
only mode TensorRT 11 has and an opt-in flag on 10.x, so one code path serves both. int8 bundles
(ONNX Runtime dynamic quantisation, MatMulInteger) are CPU-only and are refused.

Each graph gets one optimisation profile over its batch axis (all other shapes are static), the
engines land beside the ONNX files as ``{graph}.engine`` with a shared ``tensorrt.timing.cache``
(reused by later builds on the same device), and the manifest records the TensorRT version, the
device, the profiles and each engine's I/O as TensorRT reports it.

Where TensorRT or a CUDA GPU is missing, :func:`check_can_build` raises one clear ``ExportError``.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from jzi.runtime import bundle as B

from .onnx_export import ExportError, file_entry, write_manifest

TIMING_CACHE = "tensorrt.timing.cache"
WORKSPACE_BYTES = 2 << 30  # scratch memory TensorRT may use while choosing kernels (fits a Jetson Orin NX)
# (min, opt, max) batch per graph: views are encoded in large batches (tile stores), a street
# photo usually alone, the decoder runs beams x queries rows.
DEFAULT_PROFILES = {"view_encoder": (1, 8, 32), "street_encoder": (1, 1, 8), "decoder": (1, 1, 64)}


def engine_role(graph: str) -> str:
    return f"{graph}_engine"


# ---------------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------------
def cuda_device() -> dict | None:
    """Name and compute capability of CUDA device 0 through the driver API, or None without one.

    Uses libcuda directly (ctypes): no PyTorch/pycuda/cuda-python needed, and no crash on a
    machine without a driver."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    dev = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(dev), 0)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return {"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError("TensorRT is not installed (pip install tensorrt, or JetPack's python3-libnvinfer); "
                          "no engines built") from None
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise ExportError(f"TensorRT {trt.__version__} is too old; jzi builds engines with TensorRT 10 or 11")
    return trt


def check_can_build(precision: str) -> None:
    """Raise one clear ExportError unless engines can be built here for a bundle of ``precision``."""
    if precision == "int8":
        raise ExportError("int8 bundles use ONNX Runtime's dynamic quantisation for CPUs; TensorRT engines are "
                          "built from fp32 or fp16 bundles")
    import_tensorrt()
    if cuda_device() is None:
        raise ExportError("no CUDA GPU found (TensorRT engines are built on the device that runs them); "
                          "no engines built")


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def batch_profile(graph: str, max_batch: int | None) -> tuple[int, int, int]:
    lo, opt, hi = DEFAULT_PROFILES[graph]
    if max_batch is not None:
        hi = max_batch
        opt = min(opt, hi)
    return lo, opt, hi


def _dims(spec_shape, batch: int) -> tuple[int, ...]:
    return tuple(batch if d == "batch" else int(d) for d in spec_shape)


def build_engine(trt, logger, onnx_path: Path, specs: dict, profile: tuple[int, int, int], cache_bytes: bytes,
                 tf32: bool) -> tuple[bytes, bytes]:
    """One serialized engine from one ONNX graph; returns (engine bytes, updated timing cache bytes)."""
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # required on 10.x, implied on 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 bundles promise fp32 numbers
    opt_profile = builder.create_optimization_profile()
    for spec in specs["inputs"]:
        if "batch" in spec["shape"]:
            opt_profile.set_shape(spec["name"], *(_dims(spec["shape"], b) for b in profile))
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):  # a cache from another device/version: start afresh
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path.name} (see the TensorRT log above)")
    return bytes(serialized), bytes(cache.serialize())


def describe_engine(trt, logger, engine_bytes: bytes) -> list[dict]:
    """The engine's I/O as TensorRT reports it (deserializing also proves the engine loads here)."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ExportError("TensorRT built an engine it cannot deserialize")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append({"name": name, "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                   else "output", "shape": list(engine.get_tensor_shape(name)),
                   "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower()})
    return io


def _check_io(graph: str, io: list[dict], specs: dict) -> None:
    want = [s["name"] for s in specs["inputs"] + specs["outputs"]]
    got = [t["name"] for t in io]
    if sorted(got) != sorted(want):
        raise ExportError(f"the {graph} engine has tensors {got}, the bundle contract wants {want}")


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(tmp)


def build_engines(bundle_dir, max_batch: int | None = None, log=None) -> dict:
    """Build ``{graph}.engine`` for the bundle's three graphs on this device; returns the new manifest.

    Engines are written to temporary names and renamed into place only when all three built, so
    a failed build leaves the bundle as it was."""
    log = log or (lambda msg: None)
    bundle_dir = Path(bundle_dir)
    manifest = B.load_manifest(bundle_dir)
    check_can_build(manifest["precision"])
    if manifest["decoder"].get("precision", "fp32") != "fp32":
        raise ExportError(f"{bundle_dir}: its int8 decoder (MatMulNBits) runs on ONNX Runtime's CPU provider only; "
                          "build engines from a bundle exported with --decoder-precision fp32")
    trt = import_tensorrt()
    device = cuda_device()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = bundle_dir / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    tf32 = False  # fp32 bundles stay fp32; fp16 bundles carry their own fp16 types
    temps: dict[str, Path] = {}
    engines = {}
    try:
        for graph in B.GRAPHS:
            profile = batch_profile(graph, max_batch)
            log(f"building the TensorRT engine for {graph} (batch {profile[0]}..{profile[2]})")
            start = time.perf_counter()
            onnx_path = bundle_dir / manifest["files"][graph]["path"]
            specs = manifest["tensors"][graph]
            engine_bytes, cache_bytes = build_engine(trt, logger, onnx_path, specs, profile, cache_bytes, tf32)
            io = describe_engine(trt, logger, engine_bytes)
            _check_io(graph, io, specs)
            temps[f"{graph}.engine"] = _write_temp(bundle_dir, f"{graph}.engine", engine_bytes)
            engines[graph] = {"role": engine_role(graph), "batch_profile": list(profile), "io": io,
                              "seconds": round(time.perf_counter() - start, 1)}
        temps[TIMING_CACHE] = _write_temp(bundle_dir, TIMING_CACHE, cache_bytes)
        for name, tmp in temps.items():
            os.chmod(tmp, 0o644)
            os.replace(tmp, bundle_dir / name)
        temps.clear()
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    for graph in B.GRAPHS:
        manifest["files"][engine_role(graph)] = file_entry(bundle_dir, f"{graph}.engine")
    manifest["files"]["tensorrt_timing_cache"] = file_entry(bundle_dir, TIMING_CACHE)
    manifest["tensorrt"] = {
        "version": trt.__version__,
        "device": device["name"],
        "compute_capability": device["compute_capability"],
        "strongly_typed": True,
        "precision": manifest["precision"],
        "tf32": tf32,
        "workspace_bytes": WORKSPACE_BYTES,
        "timing_cache": TIMING_CACHE,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engines": engines,
        "note": "engines are specific to this device and TensorRT version; rebuild with jzi-export --trt-only",
    }
    write_manifest(bundle_dir, manifest)
    return manifest
