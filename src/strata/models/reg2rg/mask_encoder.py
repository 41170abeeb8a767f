"""Frozen encoders of Reg2RG: the CT ViT-3D and the mask encoder (docs/design.md §4.4).

The mask encoder is the same ViT-3D design over the 1-channel region mask (full config:
256 x 256 x 64, patch 32 x 32 x 16, width 255, depth 3 -> 256 tokens), mean-pooled to
one vector per region; the trainable ``mask_proj`` of :mod:`.fusion` maps it to the LLM
width (the region's geometry token).

Both encoders are frozen and always run in eval mode (no dropout; the original kept
dropout on in its frozen ViT during training), so their outputs are a pure function of the
weights and the input: the token cache (:mod:`strata.reg2rg.token_cache`) stores them once.
In the demo both are randomly initialised from the seed unless weights are configured.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from strata.models.reg2rg.vit3d import ViT3D
from strata.reg2rg.config import EncoderConfig


class FrozenEncoders(nn.Module):
    """The CT ViT-3D (``vit``) and the mask ViT-3D (``mask``), frozen, eval mode only.

    Args:
        cfg: both architectures (:class:`~strata.reg2rg.config.EncoderConfig`).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.mask.in_channels != 1:
            raise ValueError(f"the mask encoder reads 1-channel masks, got in_channels {cfg.mask.in_channels}")
        self.vit = ViT3D(cfg.vit)
        self.mask = ViT3D(cfg.mask)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenEncoders:
        return super().train(False)

    @torch.no_grad()
    def encode_volumes(self, x: Tensor) -> Tensor:
        """``[B, C, H, W, D]`` -> ViT tokens ``[B, N, dim]``."""
        return self.vit(x)[0]

    @torch.no_grad()
    def encode_masks(self, m: Tensor) -> Tensor:
        """``[B, 1, h, w, d]`` masks -> mean-pooled mask features ``[B, mask_dim]``."""
        return self.mask(m)[0].mean(dim=1)


def build_encoders(cfg: EncoderConfig, seed: int, checkpoint: Any = None) -> FrozenEncoders:
    """The frozen encoders: seeded random init, then RadFM / Reg2RG weights if configured.

    Built under their own seed (``fork_rng``), so the token cache rule and any other user
    get identical encoders whatever else was initialised before.
    """
    from strata.models.reg2rg.weights import load_encoder_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoders = FrozenEncoders(cfg)
    load_encoder_weights(encoders, cfg.vit_weights, checkpoint)
    return encoders
