"""Checkpoint IO: the authors' files, ours, and pretrained DINOv2 weights.

On disk a checkpoint is a torch file holding a dict with ``model_state_dict`` whose encoder keys
use the transformers 4.47 ``Dinov2Model`` names (the authors' layout). jzi adds ``jzi_config``
(the model config) so one loader reads both. Files are untrusted: ``weights_only=True`` always,
and every problem is one ``CheckpointError`` line.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from jzi.runtime.bundle import sha256_file

from .config import ModelConfig, get_preset
from .model import JustZoomIn

ENC = "encoder.backbone."

# transformers 4.47 (the authors' files) -> newer Dinov2Model attention names
_LEGACY_TO_NEW = [
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with one line saying why."""


# ---- key layouts ---------------------------------------------------------------------------------
def _installed_uses_new_names() -> bool:
    from transformers import Dinov2Config, Dinov2Model

    tiny = Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                                    image_size=14, patch_size=14))
    return any(".attention.q_proj." in k for k in tiny.state_dict())


def to_legacy_names(state: dict) -> dict:
    """Model state dict -> the authors' (transformers 4.47) key names."""
    out = {}
    for k, v in state.items():
        for old, new in _LEGACY_TO_NEW:
            k = k.replace(new, old)
        out[k] = v
    return out


def to_installed_names(state: dict) -> dict:
    """Authors'/legacy key names -> whatever the installed transformers' Dinov2Model uses."""
    if not _installed_uses_new_names():
        return to_legacy_names(state)
    out = {}
    for k, v in state.items():
        for old, new in _LEGACY_TO_NEW:
            k = k.replace(old, new)
        out[k] = v
    return out


def strip_prefixes(state: dict) -> dict:
    """Drop torch.compile (``_orig_mod.``) and DDP (``module.``) prefixes, in any order."""
    out = {}
    for k, v in state.items():
        while True:
            for p in ("_orig_mod.", "module."):
                if k.startswith(p):
                    k = k[len(p):]
                    break
            else:
                break
        out[k.replace("._orig_mod.", ".")] = v
    return out


# ---- reading ----------------------------------------------------------------------------------------
def read_torch_file(path) -> object:
    """torch.load with ``weights_only=True``, mapping every failure to one clear line (torch's own
    warnings and its advice to set ``weights_only=False`` are never shown)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise before our one line
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # "Unsupported global: GLOBAL x.y" (not allow-listed) or "unsupported GLOBAL os.system whose module
        # os is blocked" (torch >= 2.6 for modules that can run code)
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        imports = [found.group(1)] if found else _pickle_imports(path)
        if imports:
            raise CheckpointError(f"{path}: refused, the file holds pickled code or objects ({imports[0]}), not just "
                                  "tensors; checkpoints are loaded with weights_only=True") from None
        raise CheckpointError(f"{path}: not a checkpoint ({_torch_reason(e)})") from None
    except Exception as e:  # a malformed file can fail anywhere inside the unpickler
        raise CheckpointError(f"{path}: not a checkpoint ({_torch_reason(e)})") from None


def _pickle_imports(path: Path) -> list[str]:
    """What a plain pickle stream imports (GLOBAL, STACK_GLOBAL, INST), read opcode by opcode without
    running anything; [] for a file that is not a pickle or imports nothing."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name in ("GLOBAL", "INST"):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
    except Exception:  # not a pickle, or a broken one: nothing to name
        return []
    return names


def _torch_reason(e: Exception) -> str:
    """torch's message without its advice (weights_only=False would run the file's code)."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        return found.group(1).strip().splitlines()[0][:200] if found else "not a torch weights file"
    return _first_line(e)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def extract_state_dict(obj, path="checkpoint") -> dict:
    if isinstance(obj, dict) and "model_state_dict" in obj:
        state = obj["model_state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict with 'model_state_dict')")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'model_state_dict' is not a mapping of names to tensors")
    return strip_prefixes(state)


def infer_config(state: dict, preset: str | None, stored: dict | None, path="checkpoint") -> ModelConfig:
    """The config stored by jzi, else the named preset, else the preset whose widths match."""
    if stored is not None and preset is None:
        try:
            return ModelConfig.from_dict(stored)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad jzi_config ({e})") from None
    if preset is not None:
        try:
            return get_preset(preset)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    cls = state.get(ENC + "embeddings.cls_token")
    width = int(cls.shape[-1]) if cls is not None else None
    for name in ("official", "small", "tiny"):
        if get_preset(name).enc_width == width:
            return get_preset(name)
    return get_preset("official")  # the check below names what differs


def check_state(model: JustZoomIn, state: dict, path="checkpoint") -> dict:
    """Exact key and shape checks and finite weights; the first problem becomes one line. ``model`` may be one
    without weights (the meta device): only its keys, shapes and dtypes are read. -> the state, installed names."""
    state = to_installed_names(state)
    expected = model.state_dict()
    # position embeddings may legitimately come at another grid only if the config says so
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing key {missing[0]}{more}; is this a Just Zoom In checkpoint of "
                              f"preset '{model.cfg.preset}'?")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]}{more} for preset '{model.cfg.preset}'")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, preset '{model.cfg.preset}' "
                                  f"expects {tuple(v.shape)}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: {k} holds NaN or Inf")
    return state


def _assign(model: JustZoomIn, state: dict) -> None:
    """``state``: checked by check_state against a model of the same config."""
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_state_into(model: JustZoomIn, state: dict, path="checkpoint") -> None:
    """Load with exact key and shape checks; the first problem becomes one line."""
    _assign(model, check_state(model, state, path))


def load_checkpoint(path, preset: str | None = None) -> tuple[JustZoomIn, dict]:
    """Read an authors' or jzi checkpoint -> (model in eval mode, info dict)."""
    obj = read_torch_file(path)
    state = extract_state_dict(obj, path)
    stored = obj.get("jzi_config") if isinstance(obj, dict) else None
    cfg = infer_config(state, preset, stored, path)
    with torch.device("meta"):  # a model without weights: a mismatched checkpoint is refused before any are made
        skeleton = JustZoomIn(cfg)
    state = check_state(skeleton, state, path)
    model = JustZoomIn(cfg)
    _assign(model, state)
    info = {
        "path": str(path),
        "sha256": sha256_file(path),
        "format": "jzi" if stored is not None else "authors",
        "epoch": obj.get("epoch") if isinstance(obj, dict) else None,
    }
    return model.eval(), info


# ---- writing ----------------------------------------------------------------------------------------
def atomic_torch_save(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: JustZoomIn, path, **extra) -> None:
    """Write the authors' layout (``model_state_dict``, 4.47 key names) plus ``jzi_config``.

    ``extra`` entries (epoch, optimizer state, metrics) must be plain tensors/containers so
    that the file still loads with ``weights_only=True``.
    """
    state = to_legacy_names({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_torch_save({"model_state_dict": state, "jzi_config": model.cfg.to_dict(), **extra}, path)


# ---- pretrained DINOv2 --------------------------------------------------------------------------
_META_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _meta_to_hf(state: dict) -> dict:
    """Meta's ``dinov2_vit*14_pretrain.pth`` names -> Dinov2Model legacy names (qkv split)."""
    out = {}
    simple = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "mask_token": "embeddings.mask_token",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    per_block = {
        "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
        "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
        "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
        "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
        "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
        "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    }
    for k, v in state.items():
        if k in simple:
            out[simple[k]] = v.reshape(1, -1) if k == "mask_token" else v
            continue
        m = _META_BLOCK.match(k)
        if not m:
            raise CheckpointError(f"unexpected key {k} in a Meta DINOv2 file")
        i, rest = m.groups()
        pre = f"encoder.layer.{i}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            q, kk, vv = v.chunk(3, dim=0)
            kind = rest.rsplit(".", 1)[1]
            out[pre + f"attention.attention.query.{kind}"] = q
            out[pre + f"attention.attention.key.{kind}"] = kk
            out[pre + f"attention.attention.value.{kind}"] = vv
        elif rest in per_block:
            out[pre + per_block[rest]] = v
        else:
            raise CheckpointError(f"unexpected key {k} in a Meta DINOv2 file")
    return out


def load_pretrained_encoder(model: JustZoomIn, source) -> None:
    """Fill the encoder from a local transformers folder or Meta's ``dinov2_vit*14_pretrain.pth``."""
    source = Path(source)
    if source.is_dir():
        from transformers import Dinov2Model

        try:
            hf = Dinov2Model.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{source}: not a transformers DINOv2 folder ({str(e).splitlines()[0]})") from None
        state = to_legacy_names(hf.state_dict())
    else:
        raw = read_torch_file(source)
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: not a DINOv2 weight file")
        raw = strip_prefixes(raw.get("model", raw) if isinstance(raw.get("model", None), dict) else raw)
        state = _meta_to_hf(raw) if "pos_embed" in raw else raw
    state = {ENC + k: v for k, v in state.items()}
    full = to_legacy_names(model.state_dict())
    full.update(state)
    load_state_into(model, full, source)
