"""Resampling onto MONAI's target grid with separable kernels when the grid is axis aligned.

MONAI's ``Spacing`` decides the output grid (shape and affine); we ask it for that grid
lazily (``lazy=True`` computes no data) so the geometry is MONAI's to the last digit. When
the source-to-target voxel map is a per-axis scale and shift (every RAS-oriented volume
without oblique slices), trilinear interpolation is the product of three 1-D linear
interpolations and nearest neighbour is three index gathers. Written by hand because
``grid_sample`` evaluates all eight neighbours per output voxel in float32 even for a
uint8 mask, which makes ten region masks 5-20x slower than the image itself; the result
equals ``Spacing`` (bilinear / nearest, border padding) up to float rounding. Oblique
grids fall back to MONAI's own resampler.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

Mode = Literal["bilinear", "nearest"]


def target_grid(image: MetaTensor, spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The affine and spatial shape MONAI's ``Spacing`` would produce, without resampling."""
    lazy = Spacing(pixdim=spacing, lazy=True)(image)
    affine = np.asarray(lazy.peek_pending_affine(), dtype=np.float64)
    shape = tuple(int(s) for s in lazy.peek_pending_shape())
    return affine, shape


def axis_map(src_affine: np.ndarray, dst_affine: np.ndarray, atol: float = 1e-6) -> np.ndarray | None:
    """``[3, 2]`` per-axis (scale, shift) from target to source voxels, or None if oblique."""
    xform = np.linalg.solve(src_affine, dst_affine)
    linear = xform[:3, :3]
    if np.abs(linear - np.diag(np.diag(linear))).max() > atol:
        return None
    return np.stack([np.diag(linear), xform[:3, 3]], axis=1)


def resample_axis(x: torch.Tensor, dim: int, coords: np.ndarray, mode: Mode) -> torch.Tensor:
    """1-D resampling of ``x`` along ``dim`` at source ``coords`` (border padding)."""
    size = x.shape[dim]
    coords = np.clip(coords, 0.0, size - 1)
    lead = (slice(None),) * dim  # advanced indexing: ~10x faster than index_select on inner dims
    if mode == "nearest":
        return x[(*lead, torch.from_numpy(np.rint(coords).astype(np.int64)))]
    lower = np.floor(coords).astype(np.int64)
    upper = np.minimum(lower + 1, size - 1)
    weight_shape = [1] * x.ndim
    weight_shape[dim] = len(coords)
    w = torch.from_numpy((coords - lower).astype(np.float32)).reshape(weight_shape)
    a = x[(*lead, torch.from_numpy(lower))]
    b = x[(*lead, torch.from_numpy(upper))]
    return torch.lerp(a, b, w)


def resample_to_spacing(image: MetaTensor, spacing: tuple[float, float, float], mode: Mode) -> MetaTensor:
    """Resample ``[C, X, Y, Z]`` to ``spacing`` on MONAI's target grid.

    Axes are processed in the order that shrinks the data fastest, so the later passes
    touch fewer voxels. ``nearest`` keeps the input dtype (uint8 masks stay uint8).
    """
    dst_affine, dst_shape = target_grid(image, spacing)
    src_affine = np.asarray(image.affine, dtype=np.float64)
    per_axis = axis_map(src_affine, dst_affine)
    if per_axis is None:  # oblique: MONAI's general resampler
        return Spacing(pixdim=spacing, mode=mode, padding_mode="border")(image)
    data = image.as_tensor()
    if mode == "bilinear" and not data.is_floating_point():
        data = data.float()
    order = sorted(range(3), key=lambda a: dst_shape[a] / image.shape[a + 1])
    for axis in order:
        scale, shift = per_axis[axis]
        coords = scale * np.arange(dst_shape[axis], dtype=np.float64) + shift
        data = resample_axis(data, axis + 1, coords, mode)
    return MetaTensor(data, affine=torch.as_tensor(dst_affine), meta={"space": "RAS"})
