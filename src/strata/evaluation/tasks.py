"""Linear probes for the tasks of a MABe22-format label file (``data.pose.labels``).

The protocol follows the MABe22 / hBehaveMAE evaluators (``hierAS-eval``) with this
project's deterministic choices:

* Features: one embedding per (sequence, frame) and level: frames that several overlapping
  windows embed are averaged (MABe22 submissions likewise hold one embedding per frame);
  frames are those the generate job extracted (every ``evaluation.generation.frame_stride``).
* Split by sequence (:mod:`strata.evaluation.protocol`): of the pose sequences the label
  file labels, ``probe.validation_fraction`` are set aside and the rest are tested in
  ``probe.folds`` folds, each predicted by a probe fitted on the other folds (one split for
  every task, level and baseline); scores over the pooled predictions.
* Frame-level tasks: the label of each extracted frame (NaN = unlabelled, left out).
  Sequence-level tasks (``strain``, ``lights``, ...): one sample per sequence, the mean of
  its frame embeddings, and one target per sequence from all its labelled frames
  (:meth:`strata.pose.labels.TaskLabels.sequence_targets`).
* Discrete tasks: ``RidgeClassifierCV`` with ``class_weight="balanced"`` over ``probe.alphas``;
  accuracy, macro F1 and, for binary 0/1 tasks, the F1 of class 1 (MABe22's score).
  Continuous tasks: ``RidgeCV`` over ``probe.alphas``; MSE (MABe22's score) and R^2.
* A task without labelled training or test samples is skipped with a warning.

Metric names (per hierarchy level; ``<task>`` = the vocabulary entry):
``task_f1/<task>``, ``task_accuracy/<task>``, ``task_f1_positive/<task>``,
``task_mse/<task>``, ``task_r2/<task>``, ``task_alpha/<task>`` (discrete),
``task_n_test/<task>`` (rows in the pooled test folds) for frame-level tasks; the same with
``task_seq_`` instead of ``task_`` for sequence-level tasks; and the means over tasks ``task_f1`` / ``task_mse``
(frame-level discrete / continuous tasks) and ``task_seq_f1`` / ``task_seq_mse``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, mean_squared_error, r2_score

from strata.evaluation.baselines import Features
from strata.evaluation.probes import regression_probe, scores
from strata.evaluation.protocol import GroupSplit, cross_validated
from strata.pose.labels import LabelTask, TaskLabels

log = logging.getLogger(__name__)


def per_frame(rows: pd.DataFrame, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the rows of each (sequence, frame): (sequences [M], frames [M], features [M, D]),
    sorted by sequence name, then frame."""
    seq = rows["sequence"].astype(str).to_numpy()
    frame = rows["frame"].to_numpy(np.int64)
    order = np.lexsort((frame, seq))
    seq, frame = seq[order], frame[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (seq[1:] != seq[:-1]) | (frame[1:] != frame[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(order)))
    pooled = np.add.reduceat(x[order], starts, axis=0) / counts[:, None]
    return seq[starts], frame[starts], pooled


def per_sequence(seq: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature of each sequence (``seq`` sorted): (names [S], features [S, D])."""
    new = np.ones(len(seq), dtype=bool)
    new[1:] = seq[1:] != seq[:-1]
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(seq)))
    return seq[starts], np.add.reduceat(x, starts, axis=0) / counts[:, None]


def _probe(task: LabelTask, f: Features, y: np.ndarray, groups: np.ndarray, split: GroupSplit,
           alphas: tuple[float, ...], prefix: str, where: str) -> dict[str, float]:
    known = np.isfinite(y)
    fold = np.array([split.fold.get(g, -1) for g in groups])
    test = known & (fold >= 0)
    if len(set(fold[test])) < 2:
        log.warning("%s: task %r has labelled samples in %d test folds: not probed",
                    where, task.name, len(set(fold[test])))
        return {}
    name = f"/{task.name}"
    out = {f"{prefix}n_test{name}": float(test.sum())}
    if task.kind == "continuous":
        pred = np.full(len(y), np.nan)
        for k in split.folds:
            part, train = test & (fold == k), test & (fold != k)
            if part.any() and train.any():
                pred[part] = regression_probe(f.x[train], y[train], f.x[part], alphas, f.reduce_to)
        scored = test & np.isfinite(pred)
        r2 = float(r2_score(y[scored], pred[scored])) if np.ptp(y[scored]) > 0 else float("nan")
        out.update({f"{prefix}mse{name}": float(mean_squared_error(y[scored], pred[scored])), f"{prefix}r2{name}": r2})
        return out
    y_int = np.where(known, y, -1).astype(np.int64)
    p = cross_validated(f.x, y_int, groups, np.zeros(len(y), np.int64), split, alphas, f.reduce_to,
                        class_weight="balanced")
    accuracy, macro_f1 = scores(p.y, p.pred)
    out.update({f"{prefix}accuracy{name}": accuracy, f"{prefix}f1{name}": macro_f1, f"{prefix}alpha{name}": p.alpha})
    if set(np.unique(y_int[known])) <= {0, 1}:
        out[f"{prefix}f1_positive{name}"] = float(f1_score(p.y, p.pred, pos_label=1, average="binary",
                                                           zero_division=0))
    return out


def task_level_metrics(rows: pd.DataFrame, f: Features, labels: TaskLabels, labelled: list[str],
                       split: GroupSplit, alphas: tuple[float, ...], where: str = "") -> dict[str, float]:
    """Every task's probe on one level's features (``rows``: ``sequence``, ``frame``; ``f.x``
    [N, D]); ``labelled``: the pose sequences the label file labels (:func:`check_overlap`)."""
    where = f"{labels.path}, {where}" if where else str(labels.path)
    seq, frame, feats = per_frame(rows, f.x)
    keep = np.isin(seq, labelled)
    seq, frame, feats = seq[keep], frame[keep], feats[keep]
    columns = labels.frame_columns(seq, frame)
    seq_names, seq_feats = per_sequence(seq, feats)
    out: dict[str, float] = {}
    for task in labels.tasks:
        if task.sequence_level:
            y = labels.sequence_targets(task, list(seq_names))
            out.update(_probe(task, Features(seq_feats, f.reduce_to), y, seq_names, split, alphas, "task_seq_", where))
        else:
            y = labels.targets(task, columns)
            out.update(_probe(task, Features(feats, f.reduce_to), y, seq, split, alphas, "task_", where))
    for prefix in ("task_", "task_seq_"):
        for score in ("f1", "mse"):
            values = [v for k, v in out.items() if k.startswith(f"{prefix}{score}/")]
            if values:
                out[f"{prefix}{score}"] = float(np.mean(values))
    return out
