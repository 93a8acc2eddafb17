"""Model configuration and named presets.

``official`` is the paper's model (DINOv2 ViT-B/14 at 384 px, a 6-layer 768-wide decoder with
8 heads); ``small`` is a ViT-S/14-shaped model; ``tiny`` trains in minutes on two CPU cores and
is what tests and the demo use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from jzi.runtime.geometry import Region


def authors_ffn_hidden(width: int, multiple_of: int = 256) -> int:
    """The authors' SwiGLU hidden size: 2/3 of the width rounded up to a multiple of 256 (512 for 768)."""
    hidden = int(2 * width / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "official"
    # encoder (transformers' Dinov2Model)
    image_size: int = 384  # square input of one encoder pass; a street photo is 2 of these side by side
    patch_size: int = 14
    enc_width: int = 768
    enc_layers: int = 12
    enc_heads: int = 12
    enc_mlp_ratio: int = 4
    pos_grid_size: int = 518  # image size of the stored position embedding (DINOv2: 518 px = 37x37)
    # decoder; its width is the encoder's
    dec_layers: int = 6
    dec_heads: int = 8
    ffn_hidden: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.1
    # zoom
    region: dict = field(default_factory=lambda: Region.default().to_dict())
    # training
    trainable_encoder_layers: int = 4  # the last N layers + final layernorm; -1 = all, 0 = frozen

    @property
    def width(self) -> int:
        return self.enc_width

    @property
    def zoom(self) -> Region:
        return Region.from_dict(self.region)

    @property
    def grid(self) -> int:
        return self.zoom.grid

    @property
    def steps(self) -> int:
        return self.zoom.steps

    @property
    def n_actions(self) -> int:
        return self.zoom.n_actions

    @property
    def head_dim(self) -> int:
        return self.width // self.dec_heads

    @property
    def cache_len(self) -> int:
        """Tokens the decoder ever attends to at inference: [g, s0, a0, ..., a_{S-2}, s_{S-1}]."""
        return 2 * self.steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**d)

    def with_region(self, region: Region) -> "ModelConfig":
        if region.view_px != self.image_size:
            region = replace(region, view_px=self.image_size)
        return replace(self, region=region.to_dict())


def _region_for(image_size: int) -> dict:
    return replace(Region.default(), view_px=image_size).to_dict()


PRESETS: dict[str, ModelConfig] = {
    "official": ModelConfig(),
    "small": ModelConfig(
        preset="small", image_size=224, enc_width=384, enc_layers=12, enc_heads=6,
        dec_layers=4, dec_heads=6, ffn_hidden=authors_ffn_hidden(384), region=_region_for(224),
    ),
    "tiny": ModelConfig(
        preset="tiny", image_size=64, patch_size=8, enc_width=96, enc_layers=4, enc_heads=3,
        pos_grid_size=64, dec_layers=2, dec_heads=4, ffn_hidden=authors_ffn_hidden(96),
        region=_region_for(64), trainable_encoder_layers=-1,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    region = overrides.pop("region", None)
    if overrides:
        cfg = replace(cfg, **overrides)
    if region is not None:
        cfg = cfg.with_region(region if isinstance(region, Region) else Region.from_dict(region))
    return cfg
