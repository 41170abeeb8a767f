"""ViT-3D of RadFM, the frozen visual encoder of Reg2RG (docs/design.md §4.4).

A volume ``[B, C, H, W, D]`` is cut into non-overlapping ``p_h x p_w x p_d`` patches,
each flattened patch goes through LayerNorm -> Linear -> LayerNorm, a learned 3-D
position embedding is added (height, width and depth tables of ``dim / 3`` each,
concatenated), and pre-norm transformer blocks follow. No CLS token, no final norm: the
output is one token per patch. Full config: 3 x 256 x 256 x 64 -> 8 x 8 x 16 = 1,024
tokens of width 768, 66.2 M parameters.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from strata.models.blocks import Block
from strata.reg2rg.config import ViT3DConfig


class PositionEmbedding3D(nn.Module):
    """Learned factorised position embedding: row, column and depth tables concatenated.

    Tables have ``pos_grid`` rows; a smaller patch grid ``(h, w, d)`` uses rows
    ``(i + 1) * (len // h) - 1`` (RadFM's striding of its 512-voxel tables).

    Args:
        width: width of each table (the token width is ``3 * width``).
        pos_grid: table lengths (height, width, depth).
    """

    def __init__(self, *, width: int, pos_grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.pos_grid = pos_grid
        self.height = nn.Embedding(pos_grid[0], width)
        self.width = nn.Embedding(pos_grid[1], width)
        self.depth = nn.Embedding(pos_grid[2], width)
        for table in (self.height, self.width, self.depth):
            nn.init.uniform_(table.weight)

    def forward(self, grid: tuple[int, int, int]) -> Tensor:
        """Position embeddings ``[h * w * d, 3 * width]`` in ``(h w d)`` token order."""
        rows = []
        for axis, (n, length) in enumerate(zip(grid, self.pos_grid)):
            if n > length or length % n:
                raise ValueError(f"patch grid {grid} does not fit the position tables {self.pos_grid} "
                                 f"(axis {axis}: {n} must divide {length})")
            rows.append((torch.arange(n, device=self.height.weight.device) + 1) * (length // n) - 1)
        h, w, d = grid
        eh = self.height(rows[0])[:, None, None].expand(h, w, d, -1)
        ew = self.width(rows[1])[None, :, None].expand(h, w, d, -1)
        ed = self.depth(rows[2])[None, None, :].expand(h, w, d, -1)
        return rearrange(torch.cat([eh, ew, ed], dim=-1), "h w d c -> (h w d) c")


def vit_block(*, dim: int, heads: int, head_dim: int, mlp_dim: int) -> Block:
    """RadFM's pre-norm block: the shared :class:`Block` with an inner attention width of
    ``heads * head_dim`` (512 inside 768-wide tokens), qkv without bias, LayerNorm eps 1e-5."""
    return Block(dim=dim, heads=heads, head_dim=head_dim, mlp_hidden=mlp_dim, qkv_bias=False, norm_eps=1e-5)


class ViT3D(nn.Module):
    """RadFM's ViT-3D (no CLS token, no final norm).

    Args:
        cfg: architecture (:class:`~strata.reg2rg.config.ViT3DConfig`).
    """

    def __init__(self, cfg: ViT3DConfig) -> None:
        super().__init__()
        if cfg.dim % 3:
            raise ValueError(f"ViT3D dim {cfg.dim} must be divisible by 3 (three position tables)")
        self.cfg = cfg
        patch_dim = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.patch_norm_in = nn.LayerNorm(patch_dim)
        self.patch_proj = nn.Linear(patch_dim, cfg.dim)
        self.patch_norm_out = nn.LayerNorm(cfg.dim)
        self.pos_embed = PositionEmbedding3D(width=cfg.dim // 3, pos_grid=cfg.pos_grid)
        self.blocks = nn.ModuleList(vit_block(dim=cfg.dim, heads=cfg.heads, head_dim=cfg.head_dim,
                                              mlp_dim=cfg.mlp_dim) for _ in range(cfg.depth))

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Patch grid of a ``[..., C, H, W, D]`` input; a side that does not divide is an error."""
        c, *sides = shape[-4:]
        if c != self.cfg.in_channels:
            raise ValueError(f"ViT3D expects {self.cfg.in_channels} channels, got input {tuple(shape)}")
        for axis, (n, p) in enumerate(zip(sides, self.cfg.patch_size)):
            if n % p:
                raise ValueError(f"input side {n} (axis {'HWD'[axis]}) is not divisible by patch {p}")
        return tuple(n // p for n, p in zip(sides, self.cfg.patch_size))  # type: ignore[return-value]

    def patchify(self, x: Tensor) -> Tensor:
        """``[B, C, H, W, D]`` -> ``[B, (h w d), (p1 p2 pd c)]``."""
        p1, p2, pd = self.cfg.patch_size
        return rearrange(x, "b c (h p1) (w p2) (d pd) -> b (h w d) (p1 p2 pd c)", p1=p1, p2=p2, pd=pd)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        """``x``: [B, C, H, W, D] -> tokens [B, h*w*d, dim] and, with ``return_attention``,
        the per-block probabilities [B, heads, N, N] (explicit path), else an empty list."""
        grid = self.grid(tuple(x.shape))
        tokens = self.patch_norm_out(self.patch_proj(self.patch_norm_in(self.patchify(x))))  # (B, N, dim)
        tokens = tokens + self.pos_embed(grid).to(tokens.dtype)
        attentions = []
        for block in self.blocks:
            tokens, attn = block(tokens, return_attention=return_attention)
            if attn is not None:
                attentions.append(attn)
        return tokens, attentions
