"""Every checkpoint's scores beside its baselines, and the margin to the strongest one.

From the long evaluate tables (``model`` column, :mod:`strata.evaluation.evaluate`) one row
per (family, run, step, metric) that at least one baseline also reports: the trained value,
a column per baseline, the strongest *non-domain* baseline (:data:`DOMAIN`) and the margin
``trained - strongest`` for scores where higher is better, ``strongest - trained`` for
errors (:func:`higher_is_better`): a positive margin always means the model wins. Per-level
metrics are averaged over levels, as in the summary's wide table. Counters and interval
bounds (``n_*``, ``*_alpha``, ``*_ci_*``, ``*_margin_*``) are not compared.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from strata.evaluation.model_names import DOMAIN, TRAINED

KEYS = ["family", "run", "step", "metric"]
_NOT_COMPARED = re.compile(r"(?:^|_)(?:n_|alpha|ci_|margin)|n_test|n_train|n_val|n_studies")


def higher_is_better(metric: str) -> bool:
    """Errors (MSE, KL, losses, ratios of errors) are lower-is-better; scores higher."""
    return not re.search(r"mse|(^|_)kl($|_)|loss|ratio", metric)


def margin_table(long: pd.DataFrame) -> pd.DataFrame:
    """The comparison table (module docstring); empty when no run reports baselines."""
    mean = long.groupby(["family", "run", "step", "model", "metric"], sort=True)["value"].mean().reset_index()
    mean = mean[~mean["metric"].str.contains(_NOT_COMPARED)]
    wide = mean.pivot_table(index=KEYS, columns="model", values="value", aggfunc="first")
    if TRAINED not in wide or wide.shape[1] < 2:
        return pd.DataFrame(columns=[*KEYS, TRAINED, "strongest_baseline", "baseline_value", "margin"])
    baselines = [c for c in wide.columns if c != TRAINED]
    wide = wide[wide[TRAINED].notna() & wide[baselines].notna().any(axis=1)]
    rows = []
    for key, row in wide.iterrows():
        up = higher_is_better(key[-1])
        candidates = {b: row[b] for b in baselines if b not in DOMAIN and np.isfinite(row[b])}
        strongest = (max if up else min)(candidates, key=candidates.get) if candidates else ""
        value = candidates.get(strongest, np.nan)
        margin = (row[TRAINED] - value) if up else (value - row[TRAINED])
        rows.append((*key, row[TRAINED], *(row[b] for b in baselines), strongest, value, margin))
    table = pd.DataFrame(rows, columns=[*KEYS, TRAINED, *baselines, "strongest_baseline", "baseline_value",
                                        "margin"])
    return table.sort_values(KEYS, kind="stable").reset_index(drop=True)
