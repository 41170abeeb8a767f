"""Shared matplotlib set-up: the Agg backend, a fixed DPI and atomic PNG saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from strata.io.atomic import atomic_path

DPI = 110


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as PNG atomically and close it (no timestamp metadata)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def minmax(a):
    """Scale to [0, 1] (display only; a constant array becomes 0)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else a * 0.0
