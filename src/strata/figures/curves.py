"""Training-loss curves (``train_log.parquet``) and metric-vs-checkpoint curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from strata.figures.style import plt, save

SKIP = {"step", "lr", "grad_norm"}
MAX_PANELS = 4


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    cumsum = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def loss_figure(log: pd.DataFrame, checkpoint_steps: list[int], title: str, path: str | Path) -> None:
    """``loss`` and up to three more logged scalars against the optimizer step, raw and
    smoothed; dotted lines mark the checkpoints."""
    columns = ["loss"] + [c for c in log.columns if c not in SKIP | {"loss"}
                          and pd.api.types.is_numeric_dtype(log[c])][: MAX_PANELS - 1]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.8 * len(columns), 3.2), squeeze=False)
    window = max(1, len(log) // 20)
    for ax, column in zip(axes[0], columns):
        ax.plot(log["step"], log[column], color="tab:blue", alpha=0.35, lw=0.8, label="per step")
        ax.plot(log["step"], smooth(log[column].to_numpy(), window), color="tab:blue", lw=1.5,
                label=f"mean of {window}")
        for step in checkpoint_steps:
            ax.axvline(step, color="gray", ls=":", lw=0.8)
        ax.set_title(column, fontsize=10)
        ax.set_xlabel("step")
        if column == "loss" and (log[column] > 0).all():
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)


def metric_figure(metrics: pd.DataFrame, names: list[str], best_step: int | None, title: str,
                  path: str | Path) -> None:
    """Each metric of ``names`` against the checkpoint step, one line per level (long
    metrics table of one run; a non-numeric level is its own label, e.g. ``corpus``); a
    dashed line marks the best checkpoint."""
    wanted, names = names, [n for n in names if n in set(metrics["metric"])]
    if not names:
        raise ValueError(f"none of the metrics {wanted} in the table")
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = metrics[metrics["metric"] == name]
        for level, group in rows.groupby("level", sort=True):
            group = group.sort_values("step")
            label = "run" if level == "all" else (f"level {level}" if str(level).isdigit() else str(level))
            ax.plot(group["step"], group["value"], "o-", ms=4, label=label)
        if best_step is not None:
            ax.axvline(best_step, color="gray", ls="--", lw=0.8, label="best checkpoint")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("checkpoint step")
        ax.set_xticks(sorted(rows["step"].unique()))
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)
