"""Attention rollout of one input per model family (:mod:`strata.rollout`, docs/design.md §5).

* Hierarchical ViT-3D: rectangular rollout across pooling, every block's dense attention
  (:meth:`Hiera3D.forward_attention`) with the pooling assignment as the residual of the
  pooling blocks (:meth:`Hiera3D.pooling_matrices`): ``R`` is ``[N_last, N_0]``.
* H-JEPA: plain spatial rollout over the target encoder's blocks: ``R`` is ``[N, N]``.
* Pose VAE: temporal rollout over the encoder's global (chunk-level) attention:
  ``R`` is ``[N_chunks, N_chunks]``.
* Reg2RG: plain spatial rollout over the frozen ViT-3D's blocks on a CT volume:
  ``R`` is ``[N, N]`` (no CLS token: every patch token is an output).

The *relevance* of the input positions is the mean of ``R``'s rows (how much every output
token draws on each input token), laid out on the input: per voxel (CT), per frame and
feature (pose, ViTs) or per frame (pose VAE, whose attention is over time only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from strata.models.pose_vae import chunk_count
from strata.rollout import rollout, temporal_rollout


@dataclass
class RolloutResult:
    """``matrix``: the raw rollout of the one input; ``relevance``: per input position,
    shaped like the input without channels ([T, H, W] for video/CT, [T] for the VAE)."""

    matrix: Tensor
    relevance: Tensor


def upsample_grid(values: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """Token grid [t, h, w] -> input grid [t*pt, h*ph, w*pw] (each patch gets its token's value)."""
    for axis, size in enumerate(patch):
        values = values.repeat_interleave(size, dim=axis)
    return values


@torch.no_grad()
def hiera3d_rollout(model: torch.nn.Module, x: Tensor) -> RolloutResult:
    """``x``: one input [1, C, T, H, W]."""
    encoder = model.encoder
    matrix = rollout(encoder.forward_attention(x), encoder.pooling_matrices())[0]  # (N_last, N_0)
    t, h, w = encoder.config.token_grid
    relevance = matrix.mean(dim=0).view(t, h, w)
    return RolloutResult(matrix, upsample_grid(relevance, encoder.config.patch_size))


@torch.no_grad()
def hjepa_rollout(model: torch.nn.Module, x: Tensor) -> RolloutResult:
    """``x``: one input [1, C, T, H, W]; attention of the target encoder (explicit path)."""
    encoder = model.target_encoder
    tokens = rearrange(encoder.patch_embed(x), "b t h w d -> b (t h w) d") + encoder.pos_embed()  # (1, N, D)
    attentions = []
    for block in encoder.blocks:
        tokens, attention = block(tokens, return_attention=True)
        attentions.append(attention)  # (1, heads, N, N)
    matrix = rollout(attentions)[0]
    t, h, w = model.config.token_grid
    relevance = matrix.mean(dim=0).view(t, h, w)
    return RolloutResult(matrix, upsample_grid(relevance, model.config.patch_size))


@torch.no_grad()
def posevae_rollout(model: torch.nn.Module, x: Tensor, valid: Tensor) -> RolloutResult:
    """``x``, ``valid``: one window [1, T, 1, F]; temporal rollout over chunks."""
    posterior = model.encode(x, valid, return_attention=True)
    matrix = temporal_rollout(posterior.global_attention)[0]  # (N, N)
    length = model.config.chunk_len
    if matrix.shape[0] != chunk_count(x.shape[1], length):
        raise ValueError(f"rollout has {matrix.shape[0]} chunks for {x.shape[1]} frames")
    relevance = matrix.mean(dim=0).repeat_interleave(length)[: x.shape[1]]  # (T,)
    return RolloutResult(matrix, relevance)


@torch.no_grad()
def reg2rg_rollout(vit: torch.nn.Module, x: Tensor) -> RolloutResult:
    """``vit``: Reg2RG's frozen ViT-3D; ``x``: one volume [1, C, H, W, D]."""
    _, attentions = vit(x, return_attention=True)  # per block (1, heads, N, N)
    matrix = rollout(attentions)[0]
    grid = vit.grid(tuple(x.shape))
    relevance = matrix.mean(dim=0).view(*grid)
    return RolloutResult(matrix, upsample_grid(relevance, vit.cfg.patch_size))
