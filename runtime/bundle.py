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
precision (fp32 | fp16 | int8; the precision of the encoders, the decoder always runs fp32),
decoder {layers, heads, head_dim, cache_len}, tensors {graph: {inputs: [...], outputs: [...]}}
each entry {name, shape (ints or axis names), dtype}, files {role: {path, sha256, bytes}},
source_checkpoint {name, sha256}, encoder_id (identifies the encoder weights, precision-free: a
tile store made by any precision of the same weights fits), parity {...}, tensorrt {...} optional.

The file is untrusted input: :func:`load_manifest` validates it and the files' checksums.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def read_json_document(path: Path, fmt: str, version: int, what: str, error: type[Exception], required) -> dict:
    """An untrusted jzi JSON file (bundle manifest, tile-store index): valid JSON, its format and
    version, and the ``required`` keys present; any problem is one ``error`` line."""
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a {what}")
    if doc.get("format_version") != version:
        raise error(f"{path}: format_version {doc.get('format_version')!r}, this jzi reads {version}")
    for key in required:
        if key not in doc:
            raise error(f"{path}: missing '{key}'")
    return doc


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
    man = read_json_document(path, FORMAT, FORMAT_VERSION, "jzi bundle manifest", BundleError,
                             ("region", "steps", "grid", "n_actions", "width", "image_size", "street_size", "decoder",
                              "files", "tensors", "encoder_id", "precision"))
    files = man["files"]
    for role in GRAPHS:
        if role not in files:
            raise BundleError(f"{path}: no '{role}' graph listed")
    for role, entry in files.items():
        rel = entry.get("path", "") if isinstance(entry, dict) else ""
        target = (root / rel).resolve()
        if not rel or root.resolve() not in target.parents:
            raise BundleError(f"{path}: file entry '{role}' points outside the bundle")
        if not target.is_file():
            raise BundleError(f"{root}: {rel} is missing")
        if verify and sha256_file(target) != entry.get("sha256"):
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupt or edited)")
    return man
