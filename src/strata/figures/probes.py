"""Per-level probe scores of one checkpoint beside every baseline: levels x labels.

One panel per label (the behaviour / findings probe, then every label-file task), the
hierarchy level on the x axis, one marker series per model (the checkpoint and each
baseline), 95 % bootstrap intervals where the evaluation reports them. The chance line of
a panel is the ``constant`` baseline's score.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from strata.figures.style import save

#: panels: the metric (per level) and its title; task metrics are found by pattern
PROBE = ("probe_macro_f1", "behaviour / findings probe (pooled test folds)")
TASK = re.compile(r"^(task_seq_f1|task_f1)/(.+)$")
MODEL_ORDER = ("trained", "random_init", "pca", "kinematic", "mask_volume", "constant")
STYLE = {"trained": ("C3", "o"), "random_init": ("C0", "s"), "pca": ("C2", "^"), "kinematic": ("C4", "D"),
         "mask_volume": ("C4", "D"), "constant": ("0.5", "x")}


def panels(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, title) of every panel the checkpoint's rows support."""
    out = [PROBE] if (rows["metric"] == PROBE[0]).any() else []
    for metric in sorted(rows["metric"].unique()):
        match = TASK.match(metric)
        if match:
            scale = "sequence" if match.group(1) == "task_seq_f1" else "frame / segment"
            out.append((metric, f"{match.group(2)} ({scale} task, macro F1)"))
    return out


def probe_figure(long: pd.DataFrame, step: int, title: str, png: Path) -> None:
    """Draw the checkpoint ``step``'s per-level scores (``long``: one run's evaluate rows)."""
    rows = long[(long["step"] == step) & (long["level"] != "all")]
    chosen = panels(rows)
    if not chosen:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no labels: no probe scores", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        save(fig, png)
        return
    cols = min(3, len(chosen))
    nrows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    models = [m for m in MODEL_ORDER if m in set(rows["model"])]
    for ax, (metric, name) in zip(axes.flat, chosen, strict=False):
        for i, model in enumerate(models):
            values = rows[(rows["model"] == model) & (rows["metric"] == metric)].set_index("level")["value"]
            if values.empty:
                continue
            levels = sorted(values.index, key=int)
            x = np.array([int(lv) for lv in levels]) + (i - (len(models) - 1) / 2) * 0.08
            y = values[levels].to_numpy()
            colour, marker = STYLE.get(model, ("k", "."))
            err = None
            if metric == PROBE[0]:
                ci = rows[(rows["model"] == model) & rows["metric"].isin(["probe_macro_f1_ci_low", "probe_macro_f1_ci_high"])]
                bounds = ci.pivot_table(index="level", columns="metric", values="value")
                if len(bounds) == len(levels):
                    bounds = bounds.loc[levels]
                    err = np.vstack([y - bounds["probe_macro_f1_ci_low"], bounds["probe_macro_f1_ci_high"] - y])
                    err = np.clip(err, 0, None)
            ax.errorbar(x, y, yerr=err, color=colour, marker=marker, linestyle="-" if model == "trained" else ":",
                        capsize=2, label=model)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("hierarchy level (0 = finest)")
        ax.set_ylabel("macro F1")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sorted({int(lv) for lv in rows["level"].unique()}))
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_axis_off()
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for one legend row under every panel
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    save(fig, png)
