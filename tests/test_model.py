"""The model against an independent plain implementation of DESIGN §2, and the KV cache against full recompute.

The reference below reads raw tensors out of a checkpoint written in the authors' layout
(transformers 4.47 key names) and recomputes everything functionally: ViT patch embedding,
bicubic-resampled position embedding, pre-LN blocks with layer scale, the CLS token, the
interleaved decoder sequence with RMSNorm, rotary embedding and SwiGLU. It shares no code with
jzi.export.model.
"""
import math

import numpy as np
import pytest

from jzi.export.config import get_preset
from jzi.runtime.geometry import Region


@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only, for this module's tests (a module-level set_grad_enabled(False) would switch
    autograd off for every test collected after it, training included)."""
    import torch

    with torch.no_grad():
        yield


# ---- an independent reference ------------------------------------------------------------------
def ref_encoder(sd, x, heads, patch, eps=1e-6):
    import torch
    import torch.nn.functional as F

    p = "encoder.backbone."
    n = x.shape[0]
    h = F.conv2d(x, sd[p + "embeddings.patch_embeddings.projection.weight"],
                 sd[p + "embeddings.patch_embeddings.projection.bias"], stride=patch)
    gh, gw = h.shape[-2:]
    h = h.flatten(2).transpose(1, 2)
    d = h.shape[-1]
    h = torch.cat([sd[p + "embeddings.cls_token"].expand(n, 1, d), h], 1)
    pos = sd[p + "embeddings.position_embeddings"]
    side = int(math.isqrt(pos.shape[1] - 1))
    grid = pos[:, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
    if (gh, gw) != (side, side):
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    h = h + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], 1)
    layers = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith(p + "encoder.layer."))
    hd = d // heads
    for i in range(layers):
        q = f"{p}encoder.layer.{i}."
        y = F.layer_norm(h, (d,), sd[q + "norm1.weight"], sd[q + "norm1.bias"], eps)
        proj = lambda name: F.linear(y, sd[q + f"attention.attention.{name}.weight"], sd[q + f"attention.attention.{name}.bias"])
        qq, kk, vv = (proj(t).view(n, -1, heads, hd).transpose(1, 2) for t in ("query", "key", "value"))
        att = (qq @ kk.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ vv
        att = F.linear(att.transpose(1, 2).reshape(n, -1, d), sd[q + "attention.output.dense.weight"],
                       sd[q + "attention.output.dense.bias"])
        h = h + sd[q + "layer_scale1.lambda1"] * att
        y = F.layer_norm(h, (d,), sd[q + "norm2.weight"], sd[q + "norm2.bias"], eps)
        y = F.linear(F.gelu(F.linear(y, sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"])), sd[q + "mlp.fc2.weight"],
                     sd[q + "mlp.fc2.bias"])
        h = h + sd[q + "layer_scale2.lambda1"] * y
    h = F.layer_norm(h, (d,), sd[p + "layernorm.weight"], sd[p + "layernorm.bias"], eps)
    return h[:, 0]


def ref_decoder(sd, g, s, a, heads, eps=1e-6):
    """Full recompute over [g, s0, a0, s1, a1, ...]; logits at the s_k positions."""
    import torch
    import torch.nn.functional as F

    p = "decoder."
    b, steps, d = s.shape
    toks = [g]
    for k in range(steps):
        toks += [s[:, k], sd[p + "action_embed.weight"][a[:, k]]]
    x = torch.stack(toks, 1)
    t = x.shape[1]
    hd = d // heads
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(v):
        v1, v2 = v[..., : hd // 2], v[..., hd // 2:]
        return v * cos + torch.cat([-v2, v1], -1) * sin

    causal = torch.ones(t, t, dtype=torch.bool).tril()
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(p + "blocks."))
    for i in range(layers):
        q = f"{p}blocks.{i}."
        y = rms(x, sd[q + "norm1.weight"])
        qq, kk, vv = (F.linear(y, sd[q + f"self_attn.{n}_proj.weight"]).view(b, t, heads, hd).transpose(1, 2)
                      for n in ("q", "k", "v"))
        qq, kk = rope(qq), rope(kk)
        sc = (qq @ kk.transpose(-1, -2)) / math.sqrt(hd)
        att = sc.masked_fill(~causal, float("-inf")).softmax(-1) @ vv
        x = x + F.linear(att.transpose(1, 2).reshape(b, t, d), sd[q + "self_attn.out_proj.weight"])
        y = rms(x, sd[q + "norm2.weight"])
        ff = F.silu(F.linear(y, sd[q + "ffn.w1.weight"])) * F.linear(y, sd[q + "ffn.w3.weight"])
        x = x + F.linear(ff, sd[q + "ffn.w2.weight"])
    x = rms(x, sd[p + "final_norm.weight"])
    return F.linear(x[:, 1::2], sd[p + "output_head.weight"])


def write_authors_checkpoint(model, path):
    """The authors' file: model_state_dict with 4.47 key names, saved from a torch.compile'd model."""
    import torch

    from jzi.export.checkpoint import to_legacy_names

    sd = {"_orig_mod." + k: v for k, v in to_legacy_names(model.state_dict()).items()}
    torch.save({"model_state_dict": sd, "epoch": 29, "optimizer_state_dict": {}}, path)


def assert_close_to_scale(ours, ref, rel=1e-5):
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel} x scale {scale:.3g}"


# ---- tests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    import torch

    from jzi.export.model import JustZoomIn

    torch.manual_seed(0)
    model = JustZoomIn(get_preset("official"))
    # random but non-trivial decoder norms so every weight matters
    for n, prm in model.decoder.named_parameters():
        if n.endswith("norm1.weight") or n.endswith("norm2.weight") or n.endswith("final_norm.weight"):
            prm.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "authors.pth"
    write_authors_checkpoint(model, path)
    return path


@pytest.mark.slow  # six ViT-B passes at 384 px; tests/test_checkpoint.py covers the authors' layout at tiny size
def test_official_authors_checkpoint_matches_plain_reference(official_ckpt):
    import torch

    from jzi.export.checkpoint import load_checkpoint
    from jzi.export.model import normalize, split_street

    model, info = load_checkpoint(official_ckpt)
    cfg = model.cfg
    assert cfg.preset == "official" and info["format"] == "authors" and info["epoch"] == 29
    assert (cfg.enc_width, cfg.dec_layers, cfg.dec_heads, cfg.ffn_hidden, cfg.image_size) == (768, 6, 8, 512, 384)
    sd = {k[len("_orig_mod."):]: v for k, v in torch.load(official_ckpt, weights_only=True)["model_state_dict"].items()}

    torch.manual_seed(1)
    b, s = 1, 4
    photo = torch.randint(0, 256, (b, 384, 768, 3), dtype=torch.uint8)
    ground = split_street(normalize(photo))  # [B, 2, 3, 384, 384]
    views = normalize(torch.randint(0, 256, (b, s, 384, 384, 3), dtype=torch.uint8))
    actions = torch.randint(0, 16, (b, s))

    ours = model(ground, views, actions)
    g = ref_encoder(sd, ground.flatten(0, 1), 12, 14).view(b, 2, -1).mean(1)
    v = ref_encoder(sd, views.flatten(0, 1), 12, 14).view(b, s, -1)
    ref = ref_decoder(sd, g, v, actions, heads=8)
    assert ours.shape == ref.shape == (b, s, 16)
    assert_close_to_scale(ours, ref)


@pytest.mark.parametrize("preset", [pytest.param("official", marks=pytest.mark.slow), "tiny"])
def test_kv_cache_step_equals_full_forward(preset):
    import torch

    from jzi.export.model import JustZoomIn

    torch.manual_seed(2)
    cfg = get_preset(preset)
    dec = JustZoomIn(cfg).decoder.eval() if preset == "tiny" else _decoder_only(cfg)
    b, s, d = 5, cfg.steps, cfg.width
    g, views, actions = torch.randn(b, d), torch.randn(b, s, d), torch.randint(0, 16, (b, s))
    full = dec(g, views, actions)
    keys, values = dec.empty_cache(b)
    prev = torch.zeros(b, dtype=torch.long)
    for k in range(s):
        logits, keys, values = dec.step(g, views[:, k], prev, torch.tensor(k), keys, values)
        assert_close_to_scale(logits, full[:, k])
        prev = actions[:, k]


def _decoder_only(cfg):
    from jzi.export.model import Decoder

    dec = Decoder(cfg).eval()
    for n, prm in dec.named_parameters():
        if "norm" in n:
            prm.uniform_(0.5, 1.5)
    return dec


@pytest.mark.parametrize("preset", [pytest.param("official", marks=pytest.mark.slow), "tiny"])
def test_greedy_paths_agree_between_cache_and_recompute(preset):
    """The authors' evaluation loop (re-run the whole decoder each step) vs the KV-cached step."""
    import torch

    from jzi.export.model import greedy_from_embeddings

    torch.manual_seed(3)
    cfg = get_preset(preset)
    dec = _decoder_only(cfg)
    region = Region.default()
    b, d = 64, cfg.width
    table = [torch.randn(region.n_views(l), d) for l in range(region.steps)]  # one embedding per view
    view_fn = lambda path: table[path.shape[1]][torch.as_tensor(region.path_index(path.numpy()))]
    g = torch.randn(b, d)

    cached, _ = greedy_from_embeddings(dec, g, view_fn, region.steps)

    recomputed = torch.zeros(b, 0, dtype=torch.long)
    seen = []
    for k in range(region.steps):
        seen.append(view_fn(recomputed))
        padded = torch.stack(seen + [torch.zeros(b, d)] * (region.steps - k - 1), 1)
        acts = torch.cat([recomputed, torch.zeros(b, region.steps - k, dtype=torch.long)], 1)
        nxt = dec(g, padded, acts)[:, k].argmax(-1)
        recomputed = torch.cat([recomputed, nxt[:, None]], 1)
    assert torch.equal(cached, recomputed)
    assert len({tuple(p) for p in cached.tolist()}) > 1  # not a degenerate constant path


def test_position_embedding_is_resampled_once_and_frozen():
    import torch

    from jzi.export.model import JustZoomIn, normalize

    torch.manual_seed(4)
    # the official 518 -> 384 px resampling; one layer of each half (the decoder plays no part here)
    model = JustZoomIn(get_preset("official", enc_layers=1, dec_layers=1)).eval()
    x = normalize(torch.randint(0, 256, (1, 384, 384, 3), dtype=torch.uint8))
    before = model.encode_views(x)
    pos = model.encoder.resampled_position_embeddings()
    assert pos.shape == (1, 27 * 27 + 1, 768)
    model.encoder.freeze_position_embeddings()
    after = model.encode_views(x)
    assert torch.equal(before, after)


def test_trainable_parameters_follow_the_recipe():
    import torch

    from jzi.export.model import JustZoomIn

    with torch.device("meta"):  # names and requires_grad only: no 0.5 GB of official-size weights to fill
        model = JustZoomIn(get_preset("official"))
    model.set_trainable()
    bb = model.encoder.backbone
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.layer.11.") for n in trainable)
    assert any(n.startswith("encoder.layer.8.") for n in trainable)
    assert not any(n.startswith("encoder.layer.7.") for n in trainable)
    assert "layernorm.weight" in trainable and "embeddings.cls_token" not in trainable
    assert all(p.requires_grad for p in model.decoder.parameters())
