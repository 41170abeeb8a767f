"""Per-level embeddings of the hierarchical ViT-3D (MAE) and H-JEPA encoders.

Levels: the hierarchical ViT-3D's stages (projected outputs, :meth:`Hiera3D.forward_features`);
H-JEPA's hierarchy levels (the target encoder's layer-normalised tokens through the
model's target levels, :meth:`HJEPA.hierarchy`: plain means of ``2**l`` tokens with
``target_heads: none``, else its :class:`LevelProjection` and FPN; on the full grid,
every slot valid). Both
give per level a grid ``[B, t, h, w, D]`` whose first axis is time for pose windows
(``[1, T, 1, F]`` inputs) and the volume's first axis for CT.

Pose: one embedding per extracted frame and level. Frames ``0, stride, 2*stride, ..``
of every window are extracted; the *frame map* sends frame ``f`` of a window of ``T``
frames to time token ``f * t // T`` of a level with ``t`` time tokens, and the
embedding is that token's features averaged over the other two grid axes.
CT: one embedding per study and level, the mean over the level's whole grid.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


@torch.no_grad()
def level_grids(family: str, model: torch.nn.Module, x: Tensor) -> list[Tensor]:
    """Per level the feature grid [B, t, h, w, D] of input ``x`` [B, C, T, H, W]."""
    if family == "hiera3d":
        return model.encoder.forward_features(x)
    if family == "hjepa":
        t, h, w = model.config.token_grid
        targets = model.forward_target(x)  # (B, N, D)
        grid = rearrange(targets, "b (t h w) d -> b t h w d", t=t, h=h, w=w)
        valid = torch.ones(grid.shape[:4], dtype=torch.bool, device=grid.device)
        return [features for features, _ in model.hierarchy(grid, valid)]
    raise ValueError(f"no embeddings for model family {family!r}")


def frame_map(num_frames: int, time_tokens: int, frames: Tensor) -> Tensor:
    """Time token of each frame index in ``frames`` at a level with ``time_tokens`` tokens."""
    if num_frames % time_tokens:
        raise ValueError(f"{num_frames} frames do not split into {time_tokens} time tokens")
    return frames * time_tokens // num_frames


def frame_embeddings(grids: list[Tensor], num_frames: int, frames: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per level (embeddings [B, K, D] of the K ``frames``, their time tokens [K])."""
    out = []
    for grid in grids:
        per_time = grid.mean(dim=(2, 3))  # (B, t, D)
        tokens = frame_map(num_frames, grid.shape[1], frames)
        out.append((per_time[:, tokens], tokens))
    return out


def volume_embeddings(grids: list[Tensor]) -> list[Tensor]:
    """Per level the mean over the whole grid, [B, D]."""
    return [grid.mean(dim=(1, 2, 3)) for grid in grids]
