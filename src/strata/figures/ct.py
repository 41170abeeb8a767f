"""Rollout relevance over a CT volume: axial, coronal and sagittal slices, raw and min-max.

The cached volume is RAS-oriented ``[H, W, D]`` = (x: right-left, y: posterior-anterior,
z: inferior-superior); slices go through the centre of the volume and are drawn with
the second axis of each plane upwards (anterior in axial, superior in coronal/sagittal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strata.figures.style import minmax, plt, save

PLANES = ("axial", "coronal", "sagittal")


def planes(volume: np.ndarray) -> dict[str, np.ndarray]:
    """Central slices of ``volume`` [X, Y, Z], each transposed for ``imshow(origin="lower")``."""
    x, y, z = (s // 2 for s in volume.shape)
    return {"axial": volume[:, :, z].T, "coronal": volume[:, y, :].T, "sagittal": volume[x, :, :].T}


def ct_rollout_figure(image: np.ndarray, relevance: np.ndarray, spacing: tuple[float, float, float], title: str,
                      path: str | Path) -> None:
    """``image``, ``relevance``: [X, Y, Z] with voxel ``spacing`` (mm). Row 1 raw relevance
    (one colour scale over the volume), row 2 min-max scaled per plane."""
    sx, sy, sz = spacing
    aspect = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), gridspec_kw={"wspace": 0.45})
    images, maps = planes(image), planes(relevance)
    lo, hi = float(relevance.min()), float(relevance.max())
    for col, plane in enumerate(PLANES):
        for row, (values, vmin, vmax, name) in enumerate(
                ((maps[plane], lo, hi, "raw"), (minmax(maps[plane]), 0.0, 1.0, "min-max"))):
            ax = axes[row, col]
            ax.imshow(images[plane], cmap="gray", origin="lower", aspect=aspect[plane])
            overlay = ax.imshow(values, cmap="inferno", alpha=0.5, origin="lower", vmin=vmin, vmax=vmax,
                                aspect=aspect[plane])
            ax.set_title(f"{plane} ({name})", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=11)
    save(fig, path)
