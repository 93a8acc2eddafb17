"""The Just Zoom In model, checkpoint-compatible with the authors' code (DESIGN §2).

    encoder  DINOv2 (transformers' Dinov2Model), CLS token after the final layernorm.
             One encoder for street halves and satellite views.
    decoder  causal pre-norm transformer over [g, s0, a0, s1, a1, ..., s_{S-1}, a_{S-1}]:
             RMSNorm, bias-free q/k/v/out, rotary embedding on q and k, SwiGLU, final RMSNorm,
             head Linear(D -> 16). The logits for action k are read at the position of s_k.

Two decoder entry points that must agree: ``forward`` (teacher forcing over the whole
sequence, the authors' training forward) and ``step`` (one zoom step against a fixed-size
KV cache with a step input, the graph that jzi exports).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_VALUE = -1.0e4  # fp16-safe "minus infinity" for attention scores


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------
def dinov2_config(cfg: ModelConfig):
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=cfg.enc_width,
        num_hidden_layers=cfg.enc_layers,
        num_attention_heads=cfg.enc_heads,
        mlp_ratio=cfg.enc_mlp_ratio,
        image_size=cfg.pos_grid_size,
        patch_size=cfg.patch_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


class Encoder(nn.Module):
    """DINOv2 wrapped so that its weights live under ``encoder.backbone.*``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from transformers import Dinov2Model

        self.cfg = cfg
        self.backbone = Dinov2Model(dinov2_config(cfg))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> CLS embeddings [N, D]."""
        return self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]

    def resampled_position_embeddings(self) -> torch.Tensor:
        """Position embedding for ``cfg.image_size`` inputs, resampled exactly as Dinov2Model does."""
        emb = self.backbone.embeddings
        n = (self.cfg.image_size // self.cfg.patch_size) ** 2
        dummy = emb.position_embeddings.new_zeros(1, n + 1, self.cfg.enc_width)
        with torch.no_grad():
            return emb.interpolate_pos_encoding(dummy, self.cfg.image_size, self.cfg.image_size).detach().clone()

    def freeze_position_embeddings(self) -> None:
        """Replace the runtime bicubic resampling by a constant (no Resize op in exported graphs)."""
        emb = self.backbone.embeddings
        fixed = self.resampled_position_embeddings()
        emb.register_buffer("_jzi_fixed_pos", fixed, persistent=False)

        def interpolate_pos_encoding(embeddings, height, width, _emb=emb):
            return _emb._jzi_fixed_pos

        emb.interpolate_pos_encoding = interpolate_pos_encoding


# ---------------------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(positions: torch.Tensor, freqs: torch.Tensor):
    """cos/sin tables [..., T, head_dim] for integer positions [..., T] (rotate-half layout)."""
    t = positions.to(freqs.dtype).unsqueeze(-1) * freqs
    t = torch.cat((t, t), dim=-1)
    return t.cos(), t.sin()


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.attn_dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def qkv(self, x, cos, sin):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def merge(self, out):
        b, _, t, _ = out.shape
        return self.resid_drop(self.out_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)))

    def forward(self, x, cos, sin):
        q, k, v = self.qkv(x, cos, sin)
        drop = self.attn_dropout if self.training else 0.0
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.hidden_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.out_drop(self.w2(self.hidden_drop(F.silu(self.w1(x)) * self.w3(x))))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg.width, cfg.dec_heads, cfg.dropout)
        self.ffn = FeedForward(cfg.width, cfg.ffn_hidden, cfg.dropout)
        self.norm1 = RMSNorm(cfg.width, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.width, cfg.norm_eps)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.norm1(x), cos, sin)
        return h + self.ffn(self.norm2(h))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.action_embed = nn.Embedding(cfg.n_actions, cfg.width)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_layers))
        self.final_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.output_head = nn.Linear(cfg.width, cfg.n_actions, bias=False)
        hd = cfg.head_dim
        self.register_buffer("freqs", 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)))

    def forward(self, query: torch.Tensor, views: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: g [B, D], s [B, S, D], actions [B, S] -> logits [B, S, A]."""
        b, s, d = views.shape
        pairs = torch.stack([views, self.action_embed(actions)], dim=2).reshape(b, 2 * s, d)
        x = self.embed_drop(torch.cat([query.unsqueeze(1), pairs], dim=1))
        cos, sin = rope_cos_sin(torch.arange(x.shape[1], device=x.device), self.freqs)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.output_head(self.final_norm(x[:, 1::2]))

    def step(self, query, view, prev_action, step, past_keys, past_values):
        """One zoom step against a fixed-size KV cache (all shapes static).

        query [B, D]        the street embedding g (used at step 0 only)
        view [B, D]         the embedding of the current satellite view s_step
        prev_action [B]     the action chosen at the previous step (ignored at step 0)
        step []             int64 scalar, 0 .. S-1
        past_keys/values    per layer [B, H, 2S, head_dim]; rows >= 2*step are unused
        -> logits [B, A], present keys/values (same shapes, rows 2*step and 2*step+1 written)

        The new tokens are [g, s0] at step 0 and [embed(a_{k-1}), s_k] afterwards, at positions
        2k and 2k+1: exactly the teacher-forcing sequence, fed two tokens at a time.
        """
        cache_len = past_keys[0].shape[2]
        first = torch.where(step == 0, query, self.action_embed(prev_action.clamp(0, self.cfg.n_actions - 1)))
        x = torch.stack([first, view], dim=1)  # [B, 2, D]
        pos = 2 * step + torch.arange(2, device=x.device)  # [2]
        cos, sin = rope_cos_sin(pos, self.freqs)
        slots = torch.arange(cache_len, device=x.device)
        write = (slots.unsqueeze(0) == pos.unsqueeze(1)).to(x.dtype)  # [2, T] one-hot rows
        keep = 1.0 - write.sum(0)  # [T]
        visible = slots.unsqueeze(0) <= pos.unsqueeze(1)  # [2, T] causal over the cache
        present_keys, present_values = [], []
        for block, pk, pv in zip(self.blocks, past_keys, past_values):
            attn = block.self_attn
            q, k, v = attn.qkv(block.norm1(x), cos, sin)
            k_all = pk * keep[:, None] + torch.einsum("nt,bhnd->bhtd", write, k)
            v_all = pv * keep[:, None] + torch.einsum("nt,bhnd->bhtd", write, v)
            scores = torch.matmul(q, k_all.transpose(-1, -2)) * (attn.head_dim**-0.5)
            scores = torch.where(visible, scores, torch.full_like(scores, MASK_VALUE))
            h = x + attn.merge(torch.matmul(scores.softmax(-1), v_all))
            x = h + block.ffn(block.norm2(h))
            present_keys.append(k_all)
            present_values.append(v_all)
        logits = self.output_head(self.final_norm(x[:, 1]))
        return logits, present_keys, present_values

    def empty_cache(self, batch: int, device=None, dtype=torch.float32):
        shape = (batch, self.cfg.dec_heads, self.cfg.cache_len, self.cfg.head_dim)
        return ([torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks],
                [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks])


# ---------------------------------------------------------------------------------------------
# the whole model
# ---------------------------------------------------------------------------------------------
class JustZoomIn(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised satellite views [N, 3, H, W] -> [N, D]."""
        return self.encoder(images)

    def encode_street(self, halves: torch.Tensor) -> torch.Tensor:
        """Normalised street halves [B, 2, 3, H, W] -> mean CLS [B, D]."""
        b, n = halves.shape[:2]
        return self.encoder(halves.flatten(0, 1)).view(b, n, -1).mean(1)

    def forward(self, ground: torch.Tensor, views: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The authors' training forward: ground [B,2,3,H,W], views [B,S,3,H,W], actions [B,S] -> [B,S,A]."""
        b, s = views.shape[:2]
        g = self.encode_street(ground)
        v = self.encode_views(views.flatten(0, 1)).view(b, s, -1)
        return self.decoder(g, v, actions)

    def set_trainable(self) -> None:
        """Freeze the encoder except its last N layers and final layernorm (the authors' recipe)."""
        n = self.cfg.trainable_encoder_layers
        bb = self.encoder.backbone
        for p in bb.parameters():
            p.requires_grad = n < 0
        if n > 0:
            for layer in bb.encoder.layer[-n:]:
                for p in layer.parameters():
                    p.requires_grad = True
        if n != 0:
            for p in bb.layernorm.parameters():
                p.requires_grad = True


def split_street(images: torch.Tensor) -> torch.Tensor:
    """A street batch [B, 3, H, 2H] -> its left and right halves [B, 2, 3, H, H]."""
    w = images.shape[-1] // 2
    return torch.stack([images[..., :w], images[..., w:]], dim=1)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] RGB -> float [..., 3, H, W] with ImageNet mean/std."""
    x = images_uint8.to(torch.float32).movedim(-1, -3) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def greedy_from_embeddings(decoder: Decoder, query: torch.Tensor, view_fn, steps: int):
    """Greedy zoom with the KV-cached step: ``view_fn(paths [B, k]) -> view embeddings [B, D]``.

    Returns (paths [B, S], logits [B, S, A]).
    """
    b = query.shape[0]
    keys, values = decoder.empty_cache(b, query.device, query.dtype)
    prev = torch.zeros(b, dtype=torch.long, device=query.device)
    path = torch.zeros(b, 0, dtype=torch.long, device=query.device)
    all_logits = []
    for k in range(steps):
        view = view_fn(path)
        logits, keys, values = decoder.step(query, view, prev, torch.tensor(k), keys, values)
        prev = logits.argmax(-1)
        path = torch.cat([path, prev[:, None]], dim=1)
        all_logits.append(logits)
    return path, torch.stack(all_logits, dim=1)
