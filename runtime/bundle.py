"""The model bundle: the contract between ``jzi-export`` (writer) and every runtime (reader).

A bundle is a directory::

    manifest.json            everything a runtime needs (below)
    view_encoder.onnx        uint8 RGB [B, S, S, 3] -> float32 [B, D] CLS embeddings (normalisation inside)
    street_encoder.onnx      uint8 RGB [B, S, 2S, 3] -> float32 [B, D] mean CLS of the two halves
    decoder.onnx             one zoom step with a fixed-size KV cache (all shapes static but batch)
    *.engine, *.timing.cache optional TensorRT engines built on the target device

Encoder I/O names: input ``images``, output ``embedding`` (both encoders).

Decoder step I/O (names follow HF Optimum where they apply; cache layout [B, heads, T, head_dim],
T = 2 * steps):

    inputs   query [B, D] f32, view [B, D] f32, prev_action [B] i64, step [] i64,
             past_key_values.{i}.key / .value [B, H, T, hd] f32 for each layer i
    outputs  logits [B, A] f32, present.{i}.key / .value [B, H, T, hd] f32

At step k the graph appends tokens [g, s0] (k = 0) or [embed(prev_action), s_k] at positions
2k, 2k+1 and returns the logits read at s_k. Feed ``present.*`` back as ``past_key_values.*``.

``manifest.json`` keys: format ("jzi-bundle"), format_version, jzi_version, created, model (the
ModelConfig dict), region (a Region dict), grid, steps, n_actions, width, image_size,
street_size [H, W], normalization {mean, std, layout: "NHWC uint8 RGB, normalised in graph"},
precision (fp32 | fp16 | int8; the precision of the encoders), decoder {layers, heads, head_dim,
cache_len, precision (fp32 | int8: int8 weights, MatMulNBits, CPU only; absent in older bundles = fp32)}
(the decoder's inputs, outputs and KV cache are float32 either way), tensors {graph: {inputs: [...], outputs: [...]}}
each entry {name, shape (ints or axis names), dtype}, files {role: {path, sha256, bytes}},
source_checkpoint {name, sha256}, encoder_id (identifies the encoder weights, precision-free: a
tile store made by any precision of the same weights fits), parity {...}, tensorrt {...} optional.

The file is untrusted input: :func:`load_manifest` validates every field against one schema
(``MANIFEST_SCHEMA``, messages name the field), checks that the fields agree with each other and
that ``tensors`` is exactly what the scalar fields imply (:func:`tensor_specs`), and checks the
files' checksums. Backends then check each graph's real input/output names, shapes and dtypes
against ``tensors`` when they load it (:func:`check_graph_io`), so swapped or edited graphs are
refused even when their checksums were updated to match.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from . import schema as S

FORMAT = "jzi-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("view_encoder", "street_encoder", "decoder")


class BundleError(ValueError):
    """A bundle that cannot be used, with one line saying why."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


_DTYPES = ("uint8", "int32", "int64", "float16", "float32")
_TENSOR = S.obj({"name": S.string(), "dtype": S.string(_DTYPES),
                 "shape": S.list_of(S.one_of(S.integer(0, 1 << 31), S.string()), max_len=8)})
_GRAPH_IO = S.obj({"inputs": S.list_of(_TENSOR, max_len=4096), "outputs": S.list_of(_TENSOR, max_len=4096)})
_FILE = S.obj({"path": S.string(), "sha256": S.string(hex_len=64)}, {"bytes": S.integer(0, 1 << 50)})
MANIFEST_SCHEMA = S.obj({
    "region": S.REGION,
    "grid": S.integer(2, 16),
    "steps": S.integer(1, 12),
    "n_actions": S.integer(4, 256),
    "width": S.integer(1, 1 << 16),
    "image_size": S.integer(1, 1 << 14),
    "street_size": S.list_of(S.integer(1, 1 << 15), length=2),
    "precision": S.string(("fp32", "fp16", "int8")),
    "decoder": S.obj({"layers": S.integer(1, 256), "heads": S.integer(1, 1024), "head_dim": S.integer(1, 1 << 14),
                      "cache_len": S.integer(2, 48)}),
    "tensors": S.obj({g: _GRAPH_IO for g in GRAPHS}),
    "files": S.mapping(_FILE),
    "encoder_id": S.string(),
}, {"normalization": S.obj({"mean": S.list_of(S.number(0, 1), length=3),
                            "std": S.list_of(S.number(0, 1e3, exclusive_lo=True), length=3)}),
    "tensorrt": S.any_value, "parity": S.any_value})


def tensor_specs(image_size: int, width: int, n_actions: int, layers: int, heads: int, cache_len: int,
                 head_dim: int) -> dict:
    """Names, shapes (ints or the axis name "batch") and dtypes of every graph's inputs and outputs."""
    s, d = image_size, width
    cache = ["batch", heads, cache_len, head_dim]

    def t(name, shape, dtype):
        return {"name": name, "shape": shape, "dtype": dtype}

    return {
        "view_encoder": {"inputs": [t("images", ["batch", s, s, 3], "uint8")],
                         "outputs": [t("embedding", ["batch", d], "float32")]},
        "street_encoder": {"inputs": [t("images", ["batch", s, 2 * s, 3], "uint8")],
                           "outputs": [t("embedding", ["batch", d], "float32")]},
        "decoder": {"inputs": [t("query", ["batch", d], "float32"), t("view", ["batch", d], "float32"),
                               t("prev_action", ["batch"], "int64"), t("step", [], "int64"),
                               *[t(n, cache, "float32") for n in past_names(layers)]],
                    "outputs": [t("logits", ["batch", n_actions], "float32"),
                                *[t(n, cache, "float32") for n in present_names(layers)]]},
    }


def manifest_tensor_specs(man: dict) -> dict:
    dec = man["decoder"]
    return tensor_specs(man["image_size"], man["width"], man["n_actions"], dec["layers"], dec["heads"],
                        dec["cache_len"], dec["head_dim"])


def _check_consistency(man: dict) -> str | None:
    """The first way the manifest's fields disagree with each other, or None."""
    r, dec = man["region"], man["decoder"]
    if (r["grid"], r["steps"], r["view_px"]) != (man["grid"], man["steps"], man["image_size"]):
        return "region.grid/steps/view_px disagree with grid/steps/image_size"
    if man["n_actions"] != man["grid"] ** 2:
        return f"n_actions is {man['n_actions']}, a {man['grid']}x{man['grid']} grid has {man['grid'] ** 2}"
    if man["street_size"] != [man["image_size"], 2 * man["image_size"]]:
        return f"street_size is {man['street_size']}, image_size {man['image_size']} needs [S, 2S]"
    if dec["cache_len"] != 2 * man["steps"]:
        return f"decoder.cache_len is {dec['cache_len']}, {man['steps']} steps need {2 * man['steps']}"
    if dec["heads"] * dec["head_dim"] != man["width"]:
        return f"decoder.heads x decoder.head_dim is {dec['heads'] * dec['head_dim']}, width is {man['width']}"
    expected = manifest_tensor_specs(man)
    for graph in GRAPHS:
        for side in ("inputs", "outputs"):
            got, want = man["tensors"][graph][side], expected[graph][side]
            if [t["name"] for t in got] != [t["name"] for t in want]:
                return f"tensors.{graph}.{side} names disagree with decoder.layers/the graph contract"
            for g, w in zip(got, want):
                if g["dtype"] != w["dtype"] or g["shape"] != w["shape"]:
                    return (f"tensors.{graph}.{side} '{g['name']}' is {g['dtype']} {g['shape']}, the manifest's "
                            f"sizes imply {w['dtype']} {w['shape']}")
    return None


def check_graph_io(manifest: dict, graph: str, inputs, outputs, where) -> None:
    """Refuse a loaded graph whose real inputs/outputs differ from ``manifest['tensors'][graph]``.

    ``inputs``/``outputs`` are (name, shape, dtype) as the engine reports them: shape items are ints
    for fixed axes and anything else (a name, None, -1) for dynamic ones; dtype a numpy dtype name.
    """
    for side, actual in (("inputs", inputs), ("outputs", outputs)):
        spec = manifest["tensors"][graph][side]
        names = [a[0] for a in actual]
        if sorted(names) != sorted(t["name"] for t in spec):
            raise BundleError(f"{where}: the {graph} graph's {side} are {names}, the manifest lists "
                              f"{[t['name'] for t in spec]} (a swapped or edited graph?)")
        by_name = {a[0]: a for a in actual}
        for t in spec:
            _, shape, dtype = by_name[t["name"]]
            fixed = [d if isinstance(d, int) else None for d in t["shape"]]
            real = [d if isinstance(d, int) and d >= 0 else None for d in shape]
            if dtype != t["dtype"] or len(real) != len(fixed) or any(
                    f is not None and r is not None and f != r for f, r in zip(fixed, real)):
                raise BundleError(f"{where}: the {graph} graph's {side[:-1]} '{t['name']}' is {dtype} {list(shape)}, "
                                  f"the manifest says {t['dtype']} {t['shape']} (a swapped or edited graph?)")


def load_manifest(bundle_dir, verify: bool = True) -> dict:
    """Read and validate ``manifest.json``; with ``verify`` also check every file's sha256."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if not root.exists():
        raise BundleError(f"{root}: does not exist")
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; is this a jzi bundle (made by jzi-export)?")
    man = S.read_json_document(path, FORMAT, {FORMAT_VERSION: MANIFEST_SCHEMA}, "jzi bundle manifest", BundleError)
    problem = _check_consistency(man)
    if problem:
        raise BundleError(f"{path}: {problem}")
    files = man["files"]
    for role in GRAPHS:
        if role not in files:
            raise BundleError(f"{path}: no '{role}' graph listed")
    for role, entry in files.items():
        rel = entry["path"]
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise BundleError(f"{path}: file entry '{role}' points outside the bundle")
        if not target.is_file():
            raise BundleError(f"{root}: {rel} is missing")
        if verify and sha256_file(target) != entry["sha256"]:
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupt or edited)")
    return man
