"""Attention rollout (Abnar & Zuidema 2020), batched over frames/volumes and heads.

Spatial rollout of a ViT encoder: for each layer ``l`` with attention ``A_l`` of shape
``[heads, N, N]``: average over heads, add the identity (the residual path), normalise
every row to sum 1 (a zero row stays zero); then ``R = Ā_{L-1} @ ... @ Ā_1 @ Ā_0``.
Temporal rollout (attention across time steps or chunks of one instance) uses the same
normalisation on per-layer ``[T, T]`` matrices and the same product
``R = T_N @ ... @ T_0``. The two are described in the literature as multiplying "in
opposite orders", but both are the same product: the accumulation ``R <- Ā_l @ R`` from
the first layer upwards (vit-explain, the original code) and the written-out product
``Ā_{L-1} ... Ā_0`` are one expression; row ``i`` of ``R`` is the share of every input
token in output token ``i``. The reverse product ``Ā_0 ... Ā_{L-1}`` is different (tested).
No final normalisation is applied (rows of ``R`` already sum to 1 when every factor is
row-stochastic); :func:`minmax_rows` scales rows to [0, 1] for display only.

Hierarchical encoders pool tokens between stages: a pooling layer's attention is
rectangular ``[N_out, N_in]`` and its residual is the pooling assignment ``P`` (each
output token averages the input tokens of its window) instead of the identity, so the
layer contributes ``rownorm(mean_heads(A) + P)`` and ``R`` becomes ``[N_last, N_0]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def row_normalise(a: Tensor) -> Tensor:
    """Divide each row by its sum (``keepdim``: rows, not columns); zero rows stay zero
    (0 / tiny = 0, so no branch is needed)."""
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def layer_matrix(attention: Tensor, residual: Tensor | None = None) -> Tensor:
    """``rownorm(mean_heads(A) + residual)`` for ``attention`` [..., heads, N_out, N_in].

    ``residual`` defaults to the identity (square attention); pass the pooling assignment
    ``[N_out, N_in]`` for a pooling layer.
    """
    # rownorm(mean_h(A) + R) = rownorm(sum_h(A) + H * R): the division by H folds into the
    # row normalisation. ``fused`` is a new tensor, so the in-place ops below are safe.
    heads = attention.shape[-3]
    fused = attention.sum(dim=-3)  # (..., N_out, N_in)
    if residual is None:
        if fused.shape[-1] != fused.shape[-2]:
            raise ValueError(f"rectangular attention {tuple(fused.shape[-2:])} needs a residual (pooling) matrix")
        fused.diagonal(dim1=-2, dim2=-1).add_(float(heads))  # + H * I without materialising I
    else:
        fused += heads * residual.to(fused.dtype)
    return fused.div_(fused.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(fused.dtype).tiny))


def rollout(attentions: Sequence[Tensor], residuals: Sequence[Tensor | None] | None = None) -> Tensor:
    """Rollout ``Ā_{L-1} @ ... @ Ā_0`` of per-layer attention [..., heads, N_out, N_in].

    Leading dimensions (frames, volumes, instances) are batched; there is no loop over
    them. Returns [..., N_last, N_0].
    """
    if not attentions:
        raise ValueError("rollout needs at least one layer")
    residuals = residuals if residuals is not None else [None] * len(attentions)
    if len(residuals) != len(attentions):
        raise ValueError(f"{len(attentions)} attention layers but {len(residuals)} residual matrices")
    result = layer_matrix(attentions[0], residuals[0])
    for attention, residual in zip(attentions[1:], residuals[1:]):
        result = layer_matrix(attention, residual) @ result  # later layers multiply on the left
    return result


def temporal_rollout(attentions: Sequence[Tensor], has_heads: bool = True) -> Tensor:
    """Rollout over time steps/chunks of one instance (or a batch of them).

    Per layer ``[..., heads, T, T]`` (or ``[..., T, T]`` with ``has_heads=False``);
    returns ``[..., T, T]``.
    """
    return rollout(attentions if has_heads else [a.unsqueeze(-3) for a in attentions])


def pooling_assignment(n_in: int, window: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[n_in // window, n_in]``: output token ``j`` averages input tokens ``j*window..``.

    Tokens must be ordered so that a pooling window is contiguous (Hiera's unrolled order).
    """
    if n_in % window:
        raise ValueError(f"{n_in} tokens do not split into pooling windows of {window}")
    return torch.kron(torch.eye(n_in // window, dtype=dtype), torch.full((1, window), 1.0 / window, dtype=dtype))


def minmax_rows(r: Tensor) -> Tensor:
    """Each row scaled to [0, 1] (display only; constant rows become 0)."""
    lo, hi = r.amin(dim=-1, keepdim=True), r.amax(dim=-1, keepdim=True)
    return torch.where(hi > lo, (r - lo) / (hi - lo).clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(r))
