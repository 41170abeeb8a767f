"""The ``summarize`` rule body: every checkpoint's metrics in one table + best checkpoints.

``metrics.parquet`` / ``metrics.csv``: one row per (family, run, step); a column per
metric of level ``all`` and, for per-level metrics, ``<metric>`` (mean over levels) plus
``<metric>@L<level>``. ``best_checkpoints.csv``: per (family, run) the step with the best
value of the family's configured metric (``evaluation.best_checkpoint``; ties: the
earliest step), its value and direction, and ``reason``: ``best``, or why the last
checkpoint was taken instead (the metric is not reported, e.g. a pose run without labels
has no probe scores; or the family has no rule). ``metrics.md`` renders the best
checkpoints and one table per run (metrics as rows, checkpoints as columns); runs probed on
the tasks of a label file (:mod:`strata.evaluation.tasks`) add a table of every task's
scores per hierarchy level at the best checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from strata.evaluation.config import BestCheckpoint
from strata.evaluation.model_names import TRAINED

log = logging.getLogger(__name__)

KEYS = ["family", "run", "step"]
#: per-task columns of the wide table: prefix (frame / sequence level), score, task, level
TASK_COLUMN = re.compile(r"^(task_seq_|task_)(f1|f1_positive|accuracy|mse|r2)/(.+?)(?:@L(\d+))?$")
TASK_SCORES = ("f1", "f1_positive", "mse", "r2")


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """Long metrics (family, run, step, level, model, metric, value) -> one row per checkpoint
    (the trained model's rows)."""
    long = long[long["model"] == TRAINED]
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
            reason = (f"no evaluation.best_checkpoint rule for {family}: last checkpoint" if rule is None else
                      f"{rule.metric} not reported (no labels for it?): last checkpoint")
            log.warning("%s/%s: %s", family, run, reason)
            records.append((family, run, int(rows["step"].max()), rule.metric if rule else "", np.nan,
                            rule.higher_is_better if rule else True, reason))
            continue
        values = rows[rule.metric].to_numpy(dtype=float)
        score = np.where(np.isnan(values), -np.inf, values if rule.higher_is_better else -values)
        best = int(np.argmax(score))  # first maximum = earliest step on ties (rows sorted by step)
        records.append((family, run, int(rows["step"].iloc[best]), rule.metric, float(values[best]),
                        rule.higher_is_better, "best"))
    return pd.DataFrame.from_records(records, columns=["family", "run", "step", "metric", "value",
                                                       "higher_is_better", "reason"])


def test_metric(metric: str) -> str:
    """The reported test metric of a selection metric (``probe_macro_f1_val`` ->
    ``probe_macro_f1``); a metric without a validation variant is its own."""
    return metric.removesuffix("_val")


def with_margins(best: pd.DataFrame, margins: pd.DataFrame) -> pd.DataFrame:
    """The best-checkpoint table plus, at the chosen step, the test metric, its value, the
    strongest non-domain baseline, its value and the margin (:mod:`strata.evaluation.margins`)."""
    extra = []
    for row in best.itertuples(index=False):
        metric = test_metric(row.metric) if row.metric else ""
        match = margins[(margins["family"] == row.family) & (margins["run"] == row.run)
                        & (margins["step"] == row.step) & (margins["metric"] == metric)]
        if len(match):
            m = match.iloc[0]
            extra.append((metric, m[TRAINED], m["strongest_baseline"], m["baseline_value"], m["margin"]))
        else:
            extra.append((metric, np.nan, "", np.nan, np.nan))
    columns = ["test_metric", "test_value", "strongest_baseline", "baseline_value", "margin"]
    return pd.concat([best.reset_index(drop=True), pd.DataFrame(extra, columns=columns)], axis=1)


def markdown(wide: pd.DataFrame, best: pd.DataFrame, margins: pd.DataFrame | None = None) -> str:
    """Best checkpoints (with margins when given), then per run its scores beside every
    baseline at the best checkpoint, and one table per run: a row per metric that run has, a
    column per checkpoint step (so a run with many metrics stays narrow), 4 significant
    digits. Level means only; the per-level (``@L<level>``) and per-region
    (``region/<region>/...``) breakdowns stay in the parquet/CSV."""
    head = with_margins(best, margins) if margins is not None else best
    parts = ["# Evaluation summary\n\n## Best checkpoint per run\n\n" + _md(head)]
    if margins is not None and len(margins):
        parts.append("## Against baselines at the best checkpoint\n\nmargin = model minus the strongest "
                     "non-domain baseline (errors: baseline minus model); positive = the model wins.")
        for row in best.itertuples(index=False):
            table = margins[(margins["family"] == row.family) & (margins["run"] == row.run)
                            & (margins["step"] == row.step) & ~margins["metric"].map(_breakdown)]
            table = table.drop(columns=["family", "run", "step"]).dropna(axis=1, how="all")
            if len(table):
                parts.append(f"### {row.family} / {row.run} (step {row.step})\n\n" + _md(table))
    parts.append("## All checkpoints")
    for (family, run), rows in wide.groupby(["family", "run"], sort=True):
        columns = [c for c in rows.columns if c not in KEYS and not _breakdown(c) and rows[c].notna().any()]
        table = rows.set_index("step")[columns].T
        table.columns = [f"step {step}" for step in table.columns]
        table = table.rename_axis("metric").reset_index()
        parts.append(f"### {family} / {run}\n\n" + _md(table))
        chosen = best[(best["family"] == family) & (best["run"] == run)]
        step = int(chosen["step"].iloc[0]) if len(chosen) else int(rows["step"].max())
        tasks = task_table(rows[rows["step"] == step])
        if tasks is not None:
            parts.append(f"#### {family} / {run}: tasks at checkpoint {step}\n\n" + _md(tasks))
    return "\n\n".join(parts) + "\n"


def task_table(row: pd.DataFrame) -> pd.DataFrame | None:
    """One checkpoint's per-task scores: a row per (task, score), a column per hierarchy level
    and their mean (None when the run has no task metrics)."""
    records: dict[tuple[str, str, str], dict[str, float]] = {}
    for column in row.columns:
        match = TASK_COLUMN.match(column)
        if not match or match.group(2) not in TASK_SCORES or row[column].isna().all():
            continue
        prefix, score, task, level = match.groups()
        scored = "sequence" if prefix == "task_seq_" else "frame"
        records.setdefault((task, scored, score), {})["mean" if level is None else f"L{level}"] = \
            float(row[column].iloc[0])
    if not records:
        return None
    levels = sorted({k for v in records.values() for k in v if k != "mean"}, key=lambda k: int(k[1:]))
    order = {score: i for i, score in enumerate(TASK_SCORES)}
    keys = sorted(records, key=lambda k: (k[1] == "sequence", k[0], order[k[2]]))
    return pd.DataFrame([(task, scored, score, *(records[(task, scored, score)].get(c, np.nan)
                                                   for c in [*levels, "mean"]))
                         for task, scored, score in keys],
                        columns=["task", "scored per", "score", *levels, "mean"])


def _breakdown(column: str) -> bool:
    return "@L" in column or column.startswith("region/") or (column.startswith("task_") and "/" in column)


def _md(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])
