"""Perceiver resampler (Flamingo; RadFM / Reg2RG's adapter), docs/design.md §4.4.

Learned latents ``[L, D]`` attend to the concatenation of the visual tokens and
themselves (keys/values from ``[x; latents]``, queries from the latents), followed by a
feed-forward network; ``depth`` such layers, each residual, then a LayerNorm. Each volume's
``N`` ViT tokens become ``L`` latent tokens (32 in Reg2RG), whatever ``N`` is.

The ``blocks.Attention`` / ``Block`` pieces do not fit here: this is cross-attention with
separate query / key-value projections without bias and two input norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from strata.reg2rg.config import PerceiverConfig


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media; latents]``.

    Args:
        dim: token width.
        heads: attention heads.
        head_dim: width per head.
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """``x``: [B, N, D] media tokens, ``latents``: [B, L, D] -> [B, L, D]."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = rearrange(self.to_q(latents), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.to_kv(torch.cat([x, latents], dim=1)), "b n (two h d) -> two b h n d",
                         two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, without biases."""

    def __init__(self, *, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PerceiverLayer(nn.Module):
    def __init__(self, *, dim: int, cfg: PerceiverConfig) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim=dim, heads=cfg.heads, head_dim=cfg.head_dim)
        self.ff = FeedForward(dim=dim, mult=cfg.ff_mult)


class PerceiverResampler(nn.Module):
    """``[B, N, D]`` tokens -> ``[B, num_latents, D]``.

    Args:
        dim: token width (the ViT-3D width).
        cfg: latents, depth, heads (:class:`~strata.reg2rg.config.PerceiverConfig`).
    """

    def __init__(self, *, dim: int, cfg: PerceiverConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim=dim, cfg=cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        latents = repeat(self.latents, "l d -> b l d", b=x.shape[0]).to(x.dtype)
        for layer in self.layers:
            latents = latents + layer.attn(x, latents)
            latents = latents + layer.ff(latents)
        return self.norm(latents)
