"""Export a Just Zoom In model to a jzi bundle (the contract is ``jzi.runtime.bundle``).

One function per graph (``export_view_encoder``, ``export_street_encoder``, ``export_decoder``),
one per precision transform (``to_fp16``, ``to_int8``), a parity check against PyTorch that every
export runs (``check_parity``), and ``export_bundle`` that ties them together and writes the
bundle directory atomically (a temp directory beside the target, renamed into place at the end).

Graphs are exported with the dynamo exporter (``dynamo=True``): the TorchScript exporter turns the
NHWC->NCHW ``movedim`` into a Transpose with a negative permutation that ONNX Runtime rejects, and
the dynamo graph comes out clean (native LayerNormalization, no Resize: the position embedding is
resampled once in PyTorch by ``Encoder.freeze_position_embeddings``). Only the batch axis is dynamic.

Precisions: fp32; fp16 encoders for GPUs (LayerNorm, Softmax and other reductions kept fp32; uint8
in, float32 out); int8 encoders for CPUs (attention fused into ONNX Runtime's MultiHeadAttention, then
dynamic quantisation of the MatMuls; ``onnx_fusions``). The
decoder is fp32 unless ``decoder_precision="int8"`` (``jzi-export --decoder-precision int8``): int8
weights cut the bytes a batch-1 step streams 4x; its argmax decides the path, so it is gated on
decisive rollouts (below) and measured on a trained model (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from jzi.runtime import bundle as B

from .checkpoint import load_checkpoint, to_legacy_names
from .config import ModelConfig
from .model import IMAGENET_MEAN, IMAGENET_STD, JustZoomIn, greedy_from_embeddings, normalize, split_street

PRECISIONS = ("fp32", "fp16", "int8")
DECODER_PRECISIONS = ("fp32", "int8")
DEFAULT_OPSET = 18  # the dynamo exporter's native opset (native LayerNormalization from 17)
MIN_OPSET = 18  # measured: converting down to 17 fails for the street encoder (ReduceMean axes)
MAX_EXPORT_BATCH = 4096  # upper bound of the dynamic batch axis as seen by the exporter

# Parity gates. Relative difference = max|ort - torch| / max|torch| over a tensor.
FP32_MAX_REL = 1e-4
# fp16/int8 encoders legitimately move embeddings a little, so a decision that PyTorch itself makes
# by a hair may flip. They fail only on NaN/Inf, or when fewer than QUANTIZED_MIN_AGREEMENT of the
# *decisive* end-to-end rollouts (ORT encoders + decoder vs PyTorch fp32) take the same path; a
# rollout is decisive when, at every step, PyTorch's best cell leads the runner-up by at least
# DECISIVE_GAP in probability. Random-weight models are rarely decisive (near-uniform logits; the
# official preset's int8 graphs matched 1 of 4 random rollouts, all by tiny margins), trained ones
# mostly are; a broken conversion (scrambled or collapsed embeddings) fails decisive rollouts.
# With no decisive rollout the agreement gate has nothing to judge and is recorded as not applied.
QUANTIZED_MIN_AGREEMENT = 0.75
DECISIVE_GAP = 0.1
# An int8 decoder sees the exact fp32 embeddings, so its decisive greedy rollouts (random query and
# view embeddings through the decoder alone) must nearly all match; its logits must stay close in
# absolute terms (a scrambled weight moves them by whole units).
DECODER_INT8_MIN_AGREEMENT = 0.995
DECODER_INT8_MAX_ABS = 0.25


class ExportError(RuntimeError):
    """An export that cannot proceed or failed its checks, with one line saying why."""


# ---------------------------------------------------------------------------------------------
# the graphs, as PyTorch modules with the bundle's flat inputs and outputs
# ---------------------------------------------------------------------------------------------
class ViewEncoderGraph(nn.Module):
    """uint8 RGB [B, S, S, 3] -> CLS embeddings [B, D]; normalisation inside."""

    def __init__(self, model: JustZoomIn):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.encode_views(normalize(images))


class StreetEncoderGraph(nn.Module):
    """uint8 RGB [B, S, 2S, 3] -> mean CLS of the left and right halves [B, D]."""

    def __init__(self, model: JustZoomIn):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.encode_street(split_street(normalize(images)))


class DecoderStepGraph(nn.Module):
    """``Decoder.step`` with flat tensors: (query, view, prev_action, step, past...) -> (logits, present...)."""

    varargs_from = 4  # inputs from this index on arrive as ``*past``

    def __init__(self, model: JustZoomIn):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, query, view, prev_action, step, *past):
        logits, keys, values = self.decoder.step(query, view, prev_action, step, list(past[0::2]), list(past[1::2]))
        return (logits, *[t for kv in zip(keys, values) for t in kv])


def tensor_specs(cfg: ModelConfig) -> dict:
    """Names, shapes (ints or the axis name "batch") and dtypes of every graph's inputs and outputs."""
    return B.tensor_specs(cfg.image_size, cfg.width, cfg.n_actions, cfg.dec_layers, cfg.dec_heads, cfg.cache_len,
                          cfg.head_dim)


_TORCH_DTYPES = {"uint8": torch.uint8, "float32": torch.float32, "int64": torch.int64}


def example_inputs(specs: dict, batch: int = 2, seed: int = 0) -> tuple:
    """Random tensors matching a graph's input specs ("batch" -> ``batch``)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs["inputs"]:
        shape = [batch if dim == "batch" else dim for dim in spec["shape"]]
        dtype = _TORCH_DTYPES[spec["dtype"]]
        if dtype == torch.uint8:
            out.append(torch.randint(0, 256, shape, generator=g, dtype=dtype))
        elif spec["name"] == "step":
            out.append(torch.tensor(0, dtype=dtype))
        elif dtype == torch.int64:
            out.append(torch.randint(0, 16, shape, generator=g, dtype=dtype))
        else:
            out.append(torch.randn(shape, generator=g, dtype=dtype))
    return tuple(out)


def _export(module: nn.Module, specs: dict, opset: int) -> onnx.ModelProto:
    """Export ``module`` with the dynamo exporter; only axes named "batch" are dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    dynamic = tuple({i: batch for i, dim in enumerate(spec["shape"]) if dim == "batch"} or None
                    for spec in specs["inputs"])
    varargs = getattr(module, "varargs_from", None)
    if varargs is not None:  # torch.export sees ``*past`` as one tuple argument
        dynamic = (*dynamic[:varargs], dynamic[varargs:])
    module = module.eval()
    # exporter chatter (missing torchvision ops, version-converter fallbacks) is not the user's
    # business; what matters is checked on the result below
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example_inputs(specs), None, dynamo=True, external_data=False, opset_version=opset,
                input_names=[s["name"] for s in specs["inputs"]], output_names=[s["name"] for s in specs["outputs"]],
                dynamic_shapes=dynamic, verbose=False, report=False, optimize=True,
            )
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    proto = program.model_proto
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"the exporter could not write {type(module).__name__} at opset {opset} (it produced "
                          f"{got_opset}); use --opset {got_opset} or higher")
    got_in = [i.name for i in proto.graph.input]
    if got_in != [s["name"] for s in specs["inputs"]]:
        raise ExportError(f"exported graph has inputs {got_in}, the bundle contract wants "
                          f"{[s['name'] for s in specs['inputs']]}")
    return proto


def export_view_encoder(model: JustZoomIn, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    return _export(ViewEncoderGraph(model), tensor_specs(model.cfg)["view_encoder"], opset)


def export_street_encoder(model: JustZoomIn, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    return _export(StreetEncoderGraph(model), tensor_specs(model.cfg)["street_encoder"], opset)


def export_decoder(model: JustZoomIn, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    return _export(DecoderStepGraph(model), tensor_specs(model.cfg)["decoder"], opset)


def prepare_for_export(model: JustZoomIn) -> JustZoomIn:
    """Eval mode, a constant position embedding (no Resize/interpolate in the graphs) and eager
    attention: the SDPA export adds IsNaN/Where passes over every score matrix (for fully masked
    rows the ViT never has), measured ~10 % slower in ONNX Runtime on CPU; the maths is the same."""
    model.eval()
    model.encoder.freeze_position_embeddings()
    backbone = model.encoder.backbone
    if hasattr(backbone, "set_attn_implementation"):  # transformers >= 4.48; older ones keep SDPA
        backbone.set_attn_implementation("eager")
    return model


# ---------------------------------------------------------------------------------------------
# precisions
# ---------------------------------------------------------------------------------------------
# Kept in fp32 inside fp16 encoders: reductions whose range or accumulation fp16 does not hold.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf"]


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, uint8/float32 IO, LayerNorm/Softmax (and friends) kept fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(proto, keep_io_types=True,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP16_KEEP_FP32)
    drop_repeated_casts(proto.graph)
    sort_nodes(proto.graph)  # the converter appends its Cast nodes after their consumers
    return proto


def drop_repeated_casts(graph: onnx.GraphProto) -> None:
    """ONNX Runtime's converter before 1.32 adds one Cast per fp32-kept consumer of a shared fp16 tensor, all
    under one output name, which breaks the graph's single assignment (seen with onnxruntime-gpu 1.31.1): keep
    the first of identical Cast nodes, and one value_info per name."""
    seen, nodes = set(), []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True) if node.op_type == "Cast" else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    if len(nodes) < len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
        infos = {}
        for info in graph.value_info:
            infos.setdefault(info.name, info)
        kept = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in infos.values()]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (stable: keeps the original order where it can)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(x in available for x in n.input)]
        if not ready:
            raise ExportError(f"graph {graph.name!r} has a cycle or an undefined input")
        for n in ready:
            available.update(n.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


# Dynamic int8 quantisation settings, chosen by measurement (benchmarks/RESULTS.md, "Export"):
# per-channel weights (same speed as per-tensor, final cells closer to fp32), full int8 range
# (reduce_range doubled the embedding error for no speed gain on AVX-512 VNNI).
INT8_PER_CHANNEL = True
INT8_REDUCE_RANGE = False


def to_int8(proto: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """An encoder for ONNX Runtime's CPU provider: attention fused into MultiHeadAttention, LayerScale
    folded, q/k/v projections merged (``onnx_fusions``, all exact), then dynamic int8 quantisation of the
    MatMuls (weights int8, activations quantised on the fly; the attention itself stays fp32).

    Measured against static (calibrated, QDQ) int8 with the attention MatMuls quantised too, which was
    slower and further from fp32 (benchmarks/RESULTS.md, "Performance (issue 14)")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_fusions import fuse_encoder_for_cpu

    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # the caller's graph stays as it was
    fuse_encoder_for_cpu(proto)
    src, dst = workdir / "int8_src.onnx", workdir / "int8_dst.onnx"
    onnx.save(proto, src)
    # The quantiser logs a generic "consider pre-processing" warning to the root logger; measured,
    # pre-processing (symbolic shape inference + fusions) did not speed these graphs up, and ORT
    # applies the same fusions when it loads them.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=INT8_PER_CHANNEL,
                         reduce_range=INT8_REDUCE_RANGE, weight_type=QuantType.QInt8)
        return onnx.load(dst)
    finally:
        logging.disable(logging.NOTSET)
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# int8 decoder: ONNX Runtime's block-wise weight-only int8 (MatMulNBits, 8 bits, blocks of 32) with
# int8 compute (accuracy_level 4). Measured against dynamic int8 (MatMulInteger) and 4 bits on the
# official decoder (benchmarks/RESULTS.md, "Performance (issue 14)").
DECODER_INT8_BLOCK = 32
DECODER_INT8_ACCURACY_LEVEL = 4


def to_int8_decoder(proto: onnx.ModelProto) -> onnx.ModelProto:
    """int8 weights for every MatMul with a constant weight (projections, SwiGLU, head)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=DECODER_INT8_BLOCK, is_symmetric=True, bits=8,
                                          accuracy_level=DECODER_INT8_ACCURACY_LEVEL)
    logging.disable(logging.INFO)  # the quantiser logs every node it visits
    try:
        quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
        quantizer.process()
        return quantizer.model.model
    finally:
        logging.disable(logging.NOTSET)


def encoder_id(model: JustZoomIn) -> str:
    """sha256 of the encoder weights (sorted keys, fp32 bytes) and its input geometry; precision-free."""
    h = hashlib.sha256()
    cfg = model.cfg
    h.update(json.dumps([cfg.image_size, cfg.patch_size, cfg.enc_width, cfg.enc_layers, cfg.enc_heads]).encode())
    # legacy (authors') key names, so the id does not depend on the installed transformers
    state = to_legacy_names(model.encoder.backbone.state_dict())
    for key in sorted(state):
        t = state[key].detach().to(torch.float32).contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# parity: ONNX Runtime vs PyTorch
# ---------------------------------------------------------------------------------------------
def ort_session(model_path, threads: int | None = None):
    """A CPU ONNX Runtime session for checks: explicit threads (intra-op ``threads`` or all cores,
    inter-op 1) and no weight pre-packing, which would hold a second copy of every MatMul weight
    (the official encoder is 345 MB; the runtime's own sessions keep pre-packing for speed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # no optimizer chatter on stderr
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def _diff(got: np.ndarray, ref: np.ndarray) -> dict:
    """max abs and relative (to the reference's max magnitude) difference, and finiteness."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    finite = bool(np.isfinite(got).all())
    max_abs = float(np.abs(got - ref).max()) if finite else float("inf")
    return {"max_abs": max_abs, "max_rel": max_abs / max(float(np.abs(ref).max()), 1e-12), "finite": finite}


def _merge(diffs: list[dict]) -> dict:
    return {"max_abs": max(d["max_abs"] for d in diffs), "max_rel": max(d["max_rel"] for d in diffs),
            "finite": all(d["finite"] for d in diffs)}


def synthetic_image(key, height: int, width: int) -> np.ndarray:
    """A deterministic uint8 RGB image for ``key``: coarse colour blocks plus noise, so that
    different keys give clearly different embeddings (pure noise images all look alike)."""
    rng = np.random.default_rng(key)
    blocks = rng.integers(0, 256, (4, 4 * width // height, 3)).astype(np.float32)
    img = np.repeat(np.repeat(blocks, -(-height // 4), axis=0), -(-width // blocks.shape[1]), axis=1)[:height, :width]
    img = img + rng.normal(0, 24, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def ort_greedy(decoder_session, query: np.ndarray, view_fn, cfg: ModelConfig):
    """Greedy zoom with the exported decoder step: ``view_fn(paths [B, k]) -> [B, D]``.

    Returns (paths [B, S] int64, logits [B, S, A] float32)."""
    b = query.shape[0]
    cache_shape = (b, cfg.dec_heads, cfg.cache_len, cfg.head_dim)
    past = {name: np.zeros(cache_shape, np.float32) for name in B.past_names(cfg.dec_layers)}
    prev = np.zeros(b, np.int64)
    path = np.zeros((b, 0), np.int64)
    all_logits = []
    for k in range(cfg.steps):
        feeds = {"query": query, "view": view_fn(path), "prev_action": prev, "step": np.array(k, np.int64), **past}
        logits, *present = decoder_session.run(None, feeds)
        past = dict(zip(B.past_names(cfg.dec_layers), present))
        prev = logits.argmax(-1).astype(np.int64)
        path = np.concatenate([path, prev[:, None]], axis=1)
        all_logits.append(logits)
    return path, np.stack(all_logits, axis=1)


@dataclass(frozen=True)
class ParitySettings:
    images: int = 2  # random images through each encoder
    rollouts: int = 200  # decoder-only greedy rollouts (random query and view embeddings)
    end_to_end: int = 8  # full rollouts: synthetic street photo -> encoders -> decoder, 4 view encodes each
    seed: int = 0


def _encoder_parity(session, module: nn.Module, images: np.ndarray) -> dict:
    got = session.run(None, {"images": images})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(images)).numpy()
    return {**_diff(got, ref), "images": int(images.shape[0])}


def _decoder_step_parity(session, model: JustZoomIn, seed: int) -> dict:
    """Every step index with random inputs and random (full) caches: logits and present tensors."""
    cfg = model.cfg
    specs = tensor_specs(cfg)["decoder"]
    logit_diffs, cache_diffs = [], []
    for k in range(cfg.steps):
        inputs = list(example_inputs(specs, batch=3, seed=seed + k))
        inputs[3] = torch.tensor(k, dtype=torch.int64)
        with torch.no_grad():
            ref = [t.numpy() for t in DecoderStepGraph(model)(*inputs)]
        got = session.run(None, {s["name"]: t.numpy() for s, t in zip(specs["inputs"], inputs)})
        logit_diffs.append(_diff(got[0], ref[0]))
        cache_diffs += [_diff(g, r) for g, r in zip(got[1:], ref[1:])]
    return {"logits": _merge(logit_diffs), "present": _merge(cache_diffs)}


def _path_figures(got: np.ndarray, ref: np.ndarray) -> dict:
    return {"queries": int(ref.shape[0]),
            "path_agreement": float((got == ref).all(axis=1).mean()),
            "step_agreement": [float(x) for x in (got == ref).mean(axis=0)]}


def _decoder_rollouts(session, model: JustZoomIn, n: int, seed: int) -> dict:
    """Greedy rollouts over random query embeddings and a random tile store of view embeddings."""
    cfg = model.cfg
    region = cfg.zoom
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((n, cfg.width)).astype(np.float32)
    table = rng.standard_normal((region.total_views, cfg.width)).astype(np.float32)

    def view_fn(path):
        path = np.asarray(path)
        return table[region.level_offset(path.shape[1]) + region.path_index(path)]

    got_paths, got_logits = ort_greedy(session, query, view_fn, cfg)
    ref_paths, ref_logits = greedy_from_embeddings(model.decoder, torch.from_numpy(query),
                                                   lambda p: torch.from_numpy(view_fn(p.numpy())), cfg.steps)
    ref_paths, ref_logits = ref_paths.numpy(), ref_logits.numpy()
    same_prefix = _same_prefix(got_paths, ref_paths)  # an int8 decoder may leave PyTorch's path
    return {**_path_figures(got_paths, ref_paths), **_decisive_figures(got_paths, ref_paths, ref_logits),
            "logits": _diff(got_logits[same_prefix], ref_logits[same_prefix])}


def decisive_steps(ref_logits: np.ndarray, gap: float = DECISIVE_GAP) -> np.ndarray:
    """[B, S] bool: at each step, the reference's best cell leads the runner-up by >= ``gap`` in probability."""
    top2 = np.sort(torch.softmax(torch.from_numpy(np.asarray(ref_logits)), -1).numpy(), axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) >= gap


def decisive_rollouts(ref_logits: np.ndarray, gap: float = DECISIVE_GAP) -> np.ndarray:
    """[B] bool: the reference's best cell leads the runner-up by >= ``gap`` in probability at every step."""
    return decisive_steps(ref_logits, gap).all(axis=1)


def decisive_decisions(got_paths: np.ndarray, ref_paths: np.ndarray, ref_logits: np.ndarray,
                       gap: float = DECISIVE_GAP) -> tuple[int, float | None]:
    """The reference's decisive decisions and the share another rollout repeats: (count, agreement).

    A decision is step k of a query where both rollouts reached the same cell so far and the reference's
    best cell leads its runner-up by >= ``gap`` in probability. Unlike ``decisive_rollouts`` (decisive at
    every step), this keeps a query's confident coarse steps when its last step is a near-tie."""
    decisive = decisive_steps(ref_logits, gap) & _same_prefix(got_paths, ref_paths)
    n = int(decisive.sum())
    return n, (float((got_paths == ref_paths)[decisive].mean()) if n else None)


def _decisive_figures(got_paths: np.ndarray, ref_paths: np.ndarray, ref_logits: np.ndarray) -> dict:
    decisive = decisive_rollouts(ref_logits)
    same = (got_paths == ref_paths).all(axis=1)
    return {"decisive_queries": int(decisive.sum()),
            "decisive_path_agreement": float(same[decisive].mean()) if decisive.any() else None}


def _same_prefix(got_paths: np.ndarray, ref_paths: np.ndarray) -> np.ndarray:
    """[B, S] bool: step k of both rollouts saw the same views (logits are comparable only there)."""
    n = len(ref_paths)
    return np.concatenate([np.ones((n, 1), bool), np.cumprod(got_paths == ref_paths, axis=1)[:, :-1] > 0], 1)


def synthetic_streets(n: int, cfg: ModelConfig, seed: int) -> np.ndarray:
    s = cfg.image_size
    return np.stack([synthetic_image([seed, 1, i], s, 2 * s) for i in range(n)])


def _end_to_end(street: np.ndarray, query: np.ndarray, view_session, decoder_session, model: JustZoomIn,
                seed: int) -> dict:
    """Full rollouts on synthetic photos ``street`` (``query``: their exported-encoder embeddings) and
    synthetic views: the exported encoders + decoder vs PyTorch fp32."""
    cfg = model.cfg
    s, region, n = cfg.image_size, cfg.zoom, len(street)

    def views(path):  # the synthetic satellite view reached by each path, keyed by its tile index
        level = path.shape[1]
        keys = region.level_offset(level) + region.path_index(path)
        return np.stack([synthetic_image([seed, 2, int(k)], s, s) for k in keys])

    got_paths, got_logits = ort_greedy(decoder_session, query,
                                       lambda p: view_session.run(None, {"images": views(p)})[0], cfg)
    view_module = ViewEncoderGraph(model)
    with torch.no_grad():
        ref_query = StreetEncoderGraph(model)(torch.from_numpy(street))
    ref_paths, ref_logits = greedy_from_embeddings(
        model.decoder, ref_query, lambda p: view_module(torch.from_numpy(views(p.numpy()))), cfg.steps)
    ref_paths, ref_logits = ref_paths.numpy(), ref_logits.numpy()
    final_cell = float((got_paths == ref_paths).all(axis=1).mean())  # same path <=> same final cell
    same_prefix = _same_prefix(got_paths, ref_paths)
    return {**_path_figures(got_paths, ref_paths), "final_cell_agreement": final_cell,
            **_decisive_figures(got_paths, ref_paths, ref_logits),
            "logits": _diff(got_logits[same_prefix], ref_logits[same_prefix])}


def check_parity(paths: dict, model: JustZoomIn, precision: str, settings: ParitySettings = ParitySettings(),
                 threads: int | None = None, decoder_precision: str = "fp32") -> dict:
    """Run the exported graphs (``paths[graph]``) against PyTorch; returns figures and ``passed``/``failures``.

    One encoder session at a time: the street encoder's work (its parity and the end-to-end queries)
    is done before the view encoder is loaded, which keeps the official preset's export under 4 GB."""
    import onnxruntime as ort

    cfg = model.cfg
    s, n = cfg.image_size, settings.images
    rng = np.random.default_rng(settings.seed)
    street_session = ort_session(paths["street_encoder"], threads)
    street_figures = _encoder_parity(street_session, StreetEncoderGraph(model),
                                     rng.integers(0, 256, (max(1, n // 2), s, 2 * s, 3), dtype=np.uint8))
    street = synthetic_streets(settings.end_to_end, cfg, settings.seed)
    query = street_session.run(None, {"images": street})[0]
    del street_session
    view_session = ort_session(paths["view_encoder"], threads)
    decoder_session = ort_session(paths["decoder"], threads)
    figures = {
        "reference": f"PyTorch {torch.__version__} fp32",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "relative_difference": "max|onnx - torch| / max|torch| over each tensor",
        "view_encoder": _encoder_parity(view_session, ViewEncoderGraph(model),
                                        rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)),
        "street_encoder": street_figures,
        "decoder_step": _decoder_step_parity(decoder_session, model, settings.seed),
        "decoder_rollouts": _decoder_rollouts(decoder_session, model, settings.rollouts, settings.seed),
        "end_to_end": _end_to_end(street, query, view_session, decoder_session, model, settings.seed),
    }
    failures = parity_failures(figures, precision, decoder_precision)
    exact = precision == "fp32" and decoder_precision == "fp32"
    gates = figures["gates"] = {"fp32_max_rel": FP32_MAX_REL}
    if decoder_precision == "fp32":
        gates["decoder_path_agreement"] = 1.0
    else:
        gates.update(decoder_decisive_path_agreement=DECODER_INT8_MIN_AGREEMENT, decoder_max_abs=DECODER_INT8_MAX_ABS,
                     decoder_decisive_gate_applied=figures["decoder_rollouts"]["decisive_queries"] > 0)
    if exact:
        gates["end_to_end_path_agreement"] = 1.0
    else:
        gates.update(end_to_end_decisive_path_agreement=QUANTIZED_MIN_AGREEMENT, decisive_gap=DECISIVE_GAP,
                     decisive_gate_applied=figures["end_to_end"]["decisive_queries"] > 0)
    figures["passed"] = not failures
    figures["failures"] = failures
    return figures


def parity_failures(fig: dict, precision: str, decoder_precision: str = "fp32") -> list[str]:
    """The gates: every figure finite; an fp32 decoder exact, an int8 one close and on PyTorch's decisive
    paths; the encoders by precision."""
    failures = []
    checks = {"view_encoder": fig["view_encoder"], "street_encoder": fig["street_encoder"],
              "decoder_step.logits": fig["decoder_step"]["logits"], "decoder_step.present": fig["decoder_step"]["present"],
              "decoder_rollouts.logits": fig["decoder_rollouts"]["logits"], "end_to_end.logits": fig["end_to_end"]["logits"]}
    encoder_checks = {"view_encoder", "street_encoder"}
    for name, d in checks.items():
        moved = ((precision != "fp32" and name in encoder_checks | {"end_to_end.logits"})
                 or (decoder_precision != "fp32" and name not in encoder_checks))
        if not d["finite"]:
            failures.append(f"{name}: NaN or Inf in the ONNX output")
        elif not moved and d["max_rel"] > FP32_MAX_REL:
            failures.append(f"{name}: relative difference {d['max_rel']:.2e} > {FP32_MAX_REL:.0e}")
        elif (decoder_precision != "fp32" and name.startswith("decoder_") and name != "decoder_step.present"
              and d["max_abs"] > DECODER_INT8_MAX_ABS):
            failures.append(f"{name}: int8 decoder moves logits by {d['max_abs']:.2f} > {DECODER_INT8_MAX_ABS}")
    rollouts = fig["decoder_rollouts"]
    if decoder_precision == "fp32" and rollouts["path_agreement"] < 1.0:
        failures.append(f"decoder_rollouts: greedy paths differ on {1 - rollouts['path_agreement']:.1%} of queries")
    elif (decoder_precision != "fp32" and rollouts["decisive_queries"]
          and rollouts["decisive_path_agreement"] < DECODER_INT8_MIN_AGREEMENT):
        failures.append(f"decoder_rollouts: {rollouts['decisive_path_agreement']:.1%} of {rollouts['decisive_queries']} "
                        f"decisive rollouts take PyTorch's path with the int8 decoder (< {DECODER_INT8_MIN_AGREEMENT:.1%})")
    e2e = fig["end_to_end"]
    if precision == "fp32" and decoder_precision == "fp32" and e2e["path_agreement"] < 1.0:
        failures.append(f"end_to_end: paths differ on {1 - e2e['path_agreement']:.1%} of queries")
    elif (precision, decoder_precision) != ("fp32", "fp32") and e2e["decisive_queries"] \
            and e2e["decisive_path_agreement"] < QUANTIZED_MIN_AGREEMENT:
        failures.append(f"end_to_end: {e2e['decisive_path_agreement']:.1%} of {e2e['decisive_queries']} decisive "
                        f"rollouts take PyTorch's path (< {QUANTIZED_MIN_AGREEMENT:.0%})")
    return failures


# ---------------------------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------------------------
EXPORTERS = {"view_encoder": export_view_encoder, "street_encoder": export_street_encoder, "decoder": export_decoder}
NO_ENGINES = {"engines": None, "note": "no TensorRT engines built; run `jzi-export --trt-only BUNDLE` on the target device"}


def default_output(checkpoint, precision: str) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}-{precision}-bundle")


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing output unless ``force``, and never replace something that is not a bundle."""
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportError(f"{out} already exists; pass --force to replace it")
        if not out.is_dir() or not (out / B.MANIFEST).is_file():
            raise ExportError(f"{out} exists and is not a jzi bundle; refusing to replace it even with --force")


def make_staging_dir(out: Path) -> Path:
    """An empty hidden directory beside ``out`` (same filesystem, so publishing is a rename)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a bundle is an ordinary directory
        return staging
    except OSError as e:
        raise ExportError(f"cannot write the bundle to {out.parent}: {e.strerror or e}") from None


def publish(staging: Path, out: Path, force: bool) -> None:
    """Move the finished staging directory to ``out``; an old bundle is moved aside, then deleted."""
    check_output(out, force)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(bundle_dir: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (temp file in the same directory, then rename)."""
    path = Path(bundle_dir) / B.MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=f".{B.MANIFEST}.", suffix=".tmp", dir=bundle_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_entry(bundle_dir: Path, rel: str) -> dict:
    path = Path(bundle_dir) / rel
    return {"path": rel, "sha256": B.sha256_file(path), "bytes": path.stat().st_size}


def set_metadata(path: Path, manifest: dict, graph: str) -> None:
    """Store the manifest (less the file checksums, which would include the file itself) in
    the graph's ``metadata_props``, one JSON value per key, plus which graph this is."""
    proto = onnx.load(path)
    meta = {f"jzi.{k}": v if isinstance(v, str) else json.dumps(v)
            for k, v in manifest.items() if k not in ("files", "tensors", "tensorrt")}
    meta["jzi.graph"] = graph
    meta["jzi.tensors"] = json.dumps(manifest["tensors"][graph])
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, path)


def _jzi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jzi")
    except PackageNotFoundError:
        return "unknown"


def build_manifest(model: JustZoomIn, precision: str, source: dict, parity: dict, opset: int,
                   seconds: float, decoder_precision: str = "fp32") -> dict:
    """Every key of the bundle contract except ``files`` (added once the files are final)."""
    import onnxruntime as ort

    cfg = model.cfg
    precision_notes = {
        "fp32": "encoders fp32",
        "fp16": f"encoders fp16 with uint8 input and float32 output; kept fp32: {', '.join(FP16_KEEP_FP32)}",
        "int8": f"encoders: ONNX Runtime dynamic int8 MatMuls (per_channel={INT8_PER_CHANNEL}, "
                f"reduce_range={INT8_REDUCE_RANGE}), attention fused into fp32 MultiHeadAttention",
    }
    decoder_notes = {
        "fp32": "decoder fp32",
        "int8": f"decoder: ONNX Runtime MatMulNBits int8 weights (blocks of {DECODER_INT8_BLOCK}, "
                f"accuracy_level {DECODER_INT8_ACCURACY_LEVEL}); inputs, outputs and KV cache float32",
    }
    return {
        "format": B.FORMAT,
        "format_version": B.FORMAT_VERSION,
        "jzi_version": _jzi_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.to_dict(),
        "region": cfg.region,
        "grid": cfg.grid,
        "steps": cfg.steps,
        "n_actions": cfg.n_actions,
        "width": cfg.width,
        "image_size": cfg.image_size,
        "street_size": [cfg.image_size, 2 * cfg.image_size],
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "layout": "NHWC uint8 RGB, normalised in graph"},
        "precision": precision,
        "precision_notes": f"{precision_notes[precision]}; {decoder_notes[decoder_precision]}",
        "decoder": {"layers": cfg.dec_layers, "heads": cfg.dec_heads, "head_dim": cfg.head_dim,
                    "cache_len": cfg.cache_len, "precision": decoder_precision},
        "tensors": tensor_specs(cfg),
        "source_checkpoint": source,
        "encoder_id": encoder_id(model),
        "parity": parity,
        "export": {"exporter": "torch.onnx.export(dynamo=True)", "opset": opset, "torch": torch.__version__,
                   "onnx": onnx.__version__, "onnxruntime": ort.__version__, "seconds": round(seconds, 1),
                   "host": platform.machine()},
        "tensorrt": dict(NO_ENGINES),
    }


def export_bundle(checkpoint, out=None, *, preset: str | None = None, precision: str = "fp32",
                  opset: int = DEFAULT_OPSET, force: bool = False, trt: bool = False,
                  trt_max_batch: int | None = None, parity: ParitySettings | None = None,
                  threads: int | None = None, decoder_precision: str = "fp32", log=None) -> tuple[Path, dict]:
    """Checkpoint -> bundle directory. Returns (bundle path, manifest). Raises ExportError/CheckpointError.

    Nothing is left behind on failure: all files go to a hidden staging directory beside ``out``
    that is renamed into place only after the parity gates (and the engines, with ``trt``) pass.
    """
    log = log or (lambda msg: None)
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if decoder_precision not in DECODER_PRECISIONS:
        raise ExportError(f"--decoder-precision {decoder_precision}: choose one of {', '.join(DECODER_PRECISIONS)}")
    if trt and decoder_precision != "fp32":
        raise ExportError("the int8 decoder (MatMulNBits) runs on ONNX Runtime's CPU provider only; TensorRT engines "
                          "are built from bundles with an fp32 decoder")
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: jzi exports opset {MIN_OPSET} or newer")
    out = Path(out) if out is not None else default_output(checkpoint, precision)
    check_output(out, force)
    if trt:
        from .tensorrt_build import check_can_build

        check_can_build(precision)
    start = time.perf_counter()
    log(f"loading {checkpoint}")
    model, info = load_checkpoint(checkpoint, preset)
    prepare_for_export(model)
    staging = make_staging_dir(out)
    try:
        paths = {}
        for graph, export_fn in EXPORTERS.items():
            log(f"exporting {graph}")
            proto = export_fn(model, opset)
            if graph != "decoder" and precision == "fp16":
                proto = to_fp16(proto)
            elif graph != "decoder" and precision == "int8":
                proto = to_int8(proto, staging)
            elif graph == "decoder" and decoder_precision == "int8":
                proto = to_int8_decoder(proto)
            paths[graph] = staging / f"{graph}.onnx"
            onnx.save(proto, paths[graph])
            del proto
            onnx.checker.check_model(str(paths[graph]))
        log("checking parity with PyTorch")
        settings = parity or default_parity(model.cfg)
        figures = check_parity(paths, model, precision, settings, threads, decoder_precision)
        if not figures["passed"]:
            raise ExportError(f"parity check failed ({precision}): {'; '.join(figures['failures'])}")
        epoch = info["epoch"]
        epoch = epoch.item() if isinstance(epoch, torch.Tensor) and epoch.numel() == 1 else epoch
        source = {"name": Path(checkpoint).name, "sha256": info["sha256"], "format": info["format"],
                  "epoch": epoch if isinstance(epoch, (int, float)) else None}
        manifest = build_manifest(model, precision, source, figures, opset, time.perf_counter() - start,
                                  decoder_precision)
        for graph, path in paths.items():
            set_metadata(path, manifest, graph)
        manifest["files"] = {graph: file_entry(staging, path.name) for graph, path in paths.items()}
        write_manifest(staging, manifest)
        if trt:
            from .tensorrt_build import build_engines

            log("building TensorRT engines")
            manifest = build_engines(staging, max_batch=trt_max_batch, log=log)
        publish(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, manifest


def default_parity(cfg: ModelConfig) -> ParitySettings:
    """Full figures for small models; fewer end-to-end rollouts where each costs six ViT passes."""
    heavy = cfg.image_size * cfg.enc_width >= 384 * 768
    return ParitySettings(end_to_end=2 if heavy else 8)
