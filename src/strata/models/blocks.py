"""Transformer pieces shared by the model families (written once, used by all).

``Attention`` has two paths: the fused ``scaled_dot_product_attention`` used for training
(flash / memory-efficient kernels on GPU) and an explicit softmax path that returns the
attention probabilities for rollout. The softmax is a named submodule so that hooks can
record it without surgery; the fused path never materialises the probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention.

    Args:
        dim: token width.
        heads: number of heads.
        head_dim: width per head; default ``dim // heads`` (``dim`` must then divide). RadFM's
            ViT-3D uses 8 x 64 = 512 inside 768-wide tokens.
        qkv_bias: bias on the fused q/k/v projection.
        dropout: dropout on the attention probabilities (training only).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int | None = None, qkv_bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim {dim} is not divisible by heads {heads}")
            head_dim = dim // heads
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """``x``: [B, N, D]; ``mask``: bool, True where a query may attend to a key,
        broadcastable to [B, heads, N, N] (e.g. [B, 1, 1, N] for key padding).

        Returns the output [B, N, D] and, with ``return_attention``, the probabilities
        [B, heads, N, N] (explicit path), else None (fused path).
        """
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        p = self.dropout if self.training else 0.0
        if return_attention:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, h, N, N)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = self.softmax(scores)
            if mask is not None:  # rows with no allowed key (padding queries) become zeros, not NaN
                attn = attn.nan_to_num(0.0)
            out = F.dropout(attn, p, self.training) @ v  # (B, h, N, d)
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), attn


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU."""

    def __init__(self, *, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    The MLP's hidden width is ``mlp_hidden`` when given, else ``dim * mlp_ratio``.
    """

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float = 4.0, mlp_hidden: int | None = None,
                 head_dim: int | None = None, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, heads=heads, head_dim=head_dim, qkv_bias=qkv_bias, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim=dim, hidden=mlp_hidden or int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), mask=mask, return_attention=return_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Fixed sine/cosine encoding [N, dim] of (possibly fractional) positions [N]."""
    if dim % 2:
        raise ValueError(f"sin-cos encoding needs an even width, got {dim}")
    freq = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) * (torch.log(torch.tensor(10000.0)) / dim))
    angles = positions.float()[:, None] * freq[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def with_velocity(x: Tensor, gain: float) -> Tensor:
    """``[B, C, T, H, W]`` -> ``[B, 2C, T, H, W]``: the input, then ``gain`` x its change
    from the previous frame along T (0 on the first frame); ``gain == 0`` returns ``x``.

    Why: a masked-reconstruction loss on arena coordinates is dominated by where keypoints
    are, while behaviour is in how they move (a walk is ~0.6 % of the arena per frame), so
    motion gets channels of its own, as in two-stream video models.
    """
    if gain == 0:
        return x
    step = torch.diff(x, dim=2, prepend=x[:, :, :1])
    return torch.cat([x, gain * step], dim=1)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3-D patches embedded by a Conv3d (kernel = stride), optionally of the
    input with its velocity channels (:func:`with_velocity`).

    Args:
        in_channels: input channels C.
        dim: token width.
        patch_size: (t, h, w) kernel and stride.
        velocity_gain: > 0 embeds ``with_velocity(x, velocity_gain)`` (2C channels).
    """

    def __init__(self, *, in_channels: int, dim: int, patch_size: tuple[int, int, int],
                 velocity_gain: float = 0.0) -> None:
        super().__init__()
        self.velocity_gain = velocity_gain
        channels = in_channels * (2 if velocity_gain else 1)
        self.proj = nn.Conv3d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def stem(self, x: Tensor) -> Tensor:
        """What the patches are cut from: ``x``, with its velocity channels if configured."""
        return with_velocity(x, self.velocity_gain)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, C, T, H, W] -> tokens [B, T/pt, H/ph, W/pw, D]."""
        return rearrange(self.proj(self.stem(x)), "b d t h w -> b t h w d")
