"""Checkpoint IO: the authors' layouts, jzi's own files, pretrained DINOv2 weights, and bad files."""
import pickle
import warnings

import pytest

from jzi.export.config import get_preset


def tiny(seed=0):
    import torch

    from jzi.export.model import JustZoomIn

    torch.manual_seed(seed)
    return JustZoomIn(get_preset("tiny")).eval()


def same_weights(a, b):
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_jzi_roundtrip_keeps_config_and_weights(tmp_path):
    import torch

    from jzi.export.checkpoint import load_checkpoint, save_checkpoint

    m = tiny()
    save_checkpoint(m, tmp_path / "c.pt", epoch=7)
    loaded, info = load_checkpoint(tmp_path / "c.pt")
    assert info["format"] == "jzi" and info["epoch"] == 7 and len(info["sha256"]) == 64
    assert loaded.cfg == m.cfg and same_weights(loaded, m)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)["model_state_dict"]
    assert any(".attention.attention.query." in k for k in raw)  # the authors' 4.47 names on disk
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_authors_layout_with_prefixes(tmp_path, prefix):
    import torch

    from jzi.export.checkpoint import load_checkpoint, to_legacy_names

    m = tiny(1)
    sd = {prefix + k: v for k, v in to_legacy_names(m.state_dict()).items()}
    torch.save({"model_state_dict": sd, "epoch": 3}, tmp_path / "a.pth")
    loaded, info = load_checkpoint(tmp_path / "a.pth", preset="tiny")
    assert info["format"] == "authors" and same_weights(loaded, m)


def _load_error(path, **kw):
    from jzi.export.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_mismatched_checkpoint_is_refused_before_any_weights_are_made(tmp_path):
    """The checks run against a model on the meta device: a tiny checkpoint read as the official preset is
    refused without making the official model's 0.5 GB of weights."""
    from unittest import mock

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.model import JustZoomIn

    built = []

    class Recorded(JustZoomIn):
        def __init__(self, cfg):
            super().__init__(cfg)
            built.append(self)

    save_checkpoint(tiny(), tmp_path / "c.pt")
    with mock.patch("jzi.export.checkpoint.JustZoomIn", Recorded):
        assert "preset 'official'" in _load_error(tmp_path / "c.pt", preset="official")
    assert built and all(p.is_meta for model in built for p in model.parameters())


def test_bad_files_get_one_clear_line(tmp_path):
    import torch

    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "not a checkpoint" in _load_error(tmp_path / "text.pt")
    assert "no such file" in _load_error(tmp_path / "missing.pt")

    class Evil:
        def __reduce__(self):  # eval, not print: Ray Data swaps builtins.print in a process that ran it
            return (eval, ("'pwned'",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model_state_dict": Evil()}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings must not reach the user either
        line = _load_error(tmp_path / "evil.pt")  # a plain pickle (not torch.save) holding code
    assert "refused, the file holds pickled code or objects (builtins.eval)" in line
    assert "weights_only=False" not in line and "\n" not in line
    torch.save({"model_state_dict": {}, "extra": Evil()}, tmp_path / "evil2.pt")
    assert "refused" in _load_error(tmp_path / "evil2.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "nodict.pt")
    assert "model_state_dict" in _load_error(tmp_path / "nodict.pt")


def test_wrong_preset_names_key_or_shape(tmp_path):
    import torch

    from jzi.export.checkpoint import save_checkpoint, to_legacy_names

    m = tiny()
    save_checkpoint(m, tmp_path / "c.pt")
    msg = _load_error(tmp_path / "c.pt", preset="small")
    assert "small" in msg and ("shape" in msg or "key" in msg)
    sd = to_legacy_names(m.state_dict())
    sd["decoder.output_head.weight"] = torch.zeros(9, 96)
    torch.save({"model_state_dict": sd}, tmp_path / "shape.pt")
    msg = _load_error(tmp_path / "shape.pt", preset="tiny")
    assert "decoder.output_head.weight" in msg and "(9, 96)" in msg and "(16, 96)" in msg
    sd = to_legacy_names(m.state_dict())
    del sd["decoder.final_norm.weight"]
    torch.save({"model_state_dict": sd}, tmp_path / "missing.pt")
    assert "missing key decoder.final_norm.weight" in _load_error(tmp_path / "missing.pt", preset="tiny")
    sd = to_legacy_names(m.state_dict())
    sd["decoder.extra.weight"] = torch.zeros(1)
    torch.save({"model_state_dict": sd}, tmp_path / "extra.pt")
    assert "unexpected key decoder.extra.weight" in _load_error(tmp_path / "extra.pt", preset="tiny")
    sd = to_legacy_names(m.state_dict())
    sd["decoder.final_norm.weight"] = torch.full((96,), float("nan"))
    torch.save({"model_state_dict": sd}, tmp_path / "nan.pt")
    assert "NaN" in _load_error(tmp_path / "nan.pt", preset="tiny")


def test_pretrained_from_transformers_folder(tmp_path):
    import torch
    from transformers import Dinov2Model

    from jzi.export.checkpoint import load_pretrained_encoder

    m = tiny(2)
    torch.manual_seed(5)
    donor = Dinov2Model(m.encoder.backbone.config)
    donor.save_pretrained(tmp_path / "dinov2")
    load_pretrained_encoder(m, tmp_path / "dinov2")
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in m.encoder.backbone.state_dict().items())


def test_pretrained_from_meta_file(tmp_path):
    """Meta's dinov2_vit*14_pretrain.pth names, with the fused qkv, map onto Dinov2Model."""
    import torch

    from jzi.export.checkpoint import load_pretrained_encoder, to_legacy_names

    m, donor = tiny(3), tiny(4)
    legacy = to_legacy_names(donor.encoder.backbone.state_dict())
    meta = {"cls_token": legacy["embeddings.cls_token"], "pos_embed": legacy["embeddings.position_embeddings"],
            "mask_token": legacy["embeddings.mask_token"],
            "patch_embed.proj.weight": legacy["embeddings.patch_embeddings.projection.weight"],
            "patch_embed.proj.bias": legacy["embeddings.patch_embeddings.projection.bias"],
            "norm.weight": legacy["layernorm.weight"], "norm.bias": legacy["layernorm.bias"]}
    for i in range(m.cfg.enc_layers):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            meta[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [legacy[p + f"attention.attention.{n}.{kind}"] for n in ("query", "key", "value")])
            meta[f"blocks.{i}.attn.proj.{kind}"] = legacy[p + f"attention.output.dense.{kind}"]
            for n in ("norm1", "norm2"):
                meta[f"blocks.{i}.{n}.{kind}"] = legacy[p + f"{n}.{kind}"]
            for n in ("fc1", "fc2"):
                meta[f"blocks.{i}.mlp.{n}.{kind}"] = legacy[p + f"mlp.{n}.{kind}"]
        meta[f"blocks.{i}.ls1.gamma"] = legacy[p + "layer_scale1.lambda1"]
        meta[f"blocks.{i}.ls2.gamma"] = legacy[p + "layer_scale2.lambda1"]
    torch.save(meta, tmp_path / "dinov2_vits14_pretrain.pth")
    decoder_before = {k: v.clone() for k, v in m.decoder.state_dict().items()}
    load_pretrained_encoder(m, tmp_path / "dinov2_vits14_pretrain.pth")
    assert all(torch.equal(v, donor.encoder.backbone.state_dict()[k]) for k, v in m.encoder.backbone.state_dict().items())
    assert all(torch.equal(v, decoder_before[k]) for k, v in m.decoder.state_dict().items())
