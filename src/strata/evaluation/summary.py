"""The ``summarize`` rule body: every checkpoint's metrics in one table + best checkpoints.

``metrics.parquet`` / ``metrics.csv``: one row per (family, run, step); a column per
metric of level ``all`` and, for per-level metrics, ``<metric>`` (mean over levels) plus
``<metric>@L<level>``. ``best_checkpoints.csv``: per (family, run) the step with the best
value of the family's configured metric (``evaluation.best_checkpoint``; ties: the
earliest step), its value and direction. ``metrics.md`` renders the best checkpoints and
one table per run (metrics as rows, checkpoints as columns).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from strata.evaluation.config import BestCheckpoint

KEYS = ["family", "run", "step"]


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """Long metrics (family, run, step, level, metric, value) -> one row per checkpoint."""
    per_run = long[long["level"] == "all"].pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first")
    levels = long[long["level"] != "all"]
    tables = [per_run]
    if not levels.empty:
        mean = levels.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="mean")
        named = levels.assign(metric=levels["metric"] + "@L" + levels["level"].astype(str))
        tables += [mean, named.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first")]
    wide = pd.concat(tables, axis=1)
    wide = wide.loc[:, ~wide.columns.duplicated()]
    wide = wide[sorted(wide.columns)].reset_index().sort_values(KEYS, kind="stable").reset_index(drop=True)
    wide.columns.name = None
    return wide


def best_checkpoints(wide: pd.DataFrame, rules: Mapping[str, BestCheckpoint]) -> pd.DataFrame:
    """Per (family, run) the best step by its family's metric (NaN values never win)."""
    records = []
    for (family, run), rows in wide.groupby(["family", "run"], sort=True):
        rule = rules.get(family)
        if rule is None or rule.metric not in rows or rows[rule.metric].isna().all():
            records.append((family, run, int(rows["step"].max()), rule.metric if rule else "", np.nan,
                            rule.higher_is_better if rule else True, "no metric: last step"))
            continue
        values = rows[rule.metric].to_numpy(dtype=float)
        score = np.where(np.isnan(values), -np.inf, values if rule.higher_is_better else -values)
        best = int(np.argmax(score))  # first maximum = earliest step on ties (rows sorted by step)
        records.append((family, run, int(rows["step"].iloc[best]), rule.metric, float(values[best]),
                        rule.higher_is_better, "best"))
    return pd.DataFrame.from_records(records, columns=["family", "run", "step", "metric", "value",
                                                       "higher_is_better", "reason"])


def markdown(wide: pd.DataFrame, best: pd.DataFrame) -> str:
    """Best checkpoints, then one table per run: a row per metric that run has, a column per
    checkpoint step (so a run with many metrics stays narrow), 4 significant digits. Level
    means only; the per-level (``@L<level>``) and per-region (``region/<region>/...``)
    breakdowns stay in the parquet/CSV."""
    parts = ["# Evaluation summary\n\n## Best checkpoint per run\n\n" + _md(best), "## All checkpoints"]
    for (family, run), rows in wide.groupby(["family", "run"], sort=True):
        columns = [c for c in rows.columns if c not in KEYS and not _breakdown(c) and rows[c].notna().any()]
        table = rows.set_index("step")[columns].T
        table.columns = [f"step {step}" for step in table.columns]
        table = table.rename_axis("metric").reset_index()
        parts.append(f"### {family} / {run}\n\n" + _md(table))
    return "\n\n".join(parts) + "\n"


def _breakdown(column: str) -> bool:
    return "@L" in column or column.startswith("region/")


def _md(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])
