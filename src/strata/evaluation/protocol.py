"""The probe protocol: validation groups, k-fold test folds, pooled predictions, bootstrap.

A *group* is what never straddles a split: a pose sequence (overlapping windows of one
sequence share frames) or a CT study. Groups are divided once per evaluate job:

* validation: ``validation_fraction`` of the groups (every k-th of the sorted names; CT:
  taken stratum by stratum of the finding combinations, so each part keeps the balance). A probe fitted on every other group
  scores them; these ``*_val`` numbers choose the best checkpoint and never enter a
  reported test number.
* test folds: the remaining groups in ``folds`` folds (round robin in sorted order, per
  stratum for CT); each fold is predicted by a probe fitted on the other folds, and the
  scores are computed once over the pooled predictions of every fold.

95 % intervals are percentile bootstraps over *units* of the pooled test predictions
(pose: behaviour segments, i.e. runs of one label inside a sequence; CT: studies),
resampled with replacement; a baseline's margin is bootstrapped *paired* (the same
resampled units for the model and the baseline), so its interval excludes 0 only when the
model wins on most resamples. Probes themselves: :mod:`strata.evaluation.probes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strata.evaluation.probes import fit_predict


@dataclass(frozen=True)
class GroupSplit:
    """Validation groups and the test fold of every other group."""

    validation: frozenset[str]
    fold: Mapping[str, int]

    @property
    def folds(self) -> list[int]:
        return sorted(set(self.fold.values()))


def group_split(groups: Sequence[str], folds: int, validation_fraction: float,
                strata: Mapping[str, str] | None = None) -> GroupSplit:
    """Split sorted ``groups``; ``strata`` (group -> stratum) keeps class balance in the
    validation part and the folds (CT findings). At least two test folds always remain."""
    names = sorted(set(groups))
    by_stratum: dict[str, list[str]] = {}
    for name in names:
        by_stratum.setdefault(strata[name] if strata else "", []).append(name)
    every = max(2, round(1.0 / validation_fraction)) if validation_fraction > 0 else 0
    validation: set[str] = set()
    rest: list[str] = []
    counter = 0
    for members in by_stratum.values():  # stratum by stratum: every part draws from each stratum
        for name in members:
            if every and counter % every == every - 1:
                validation.add(name)
            else:
                rest.append(name)
            counter += 1
    if len(rest) < 2:
        raise ValueError(f"{len(names)} groups leave {len(rest)} for the test folds after validation "
                         f"(validation_fraction {validation_fraction}): need at least 2")
    k = min(folds, len(rest))
    fold: dict[str, int] = {}
    counter = 0
    for members in by_stratum.values():
        for name in members:
            if name not in validation:
                fold[name] = counter % k
                counter += 1
    return GroupSplit(frozenset(validation), fold)


@dataclass(frozen=True)
class Predictions:
    """Pooled test predictions of one probe (rows with a label only), validation predictions,
    and the bootstrap unit of every test row."""

    y: np.ndarray
    pred: np.ndarray
    unit: np.ndarray
    val_y: np.ndarray
    val_pred: np.ndarray
    alpha: float
    n_train: int


def cross_validated(x: np.ndarray, y: np.ndarray, groups: np.ndarray, units: np.ndarray, split: GroupSplit,
                    alphas: tuple[float, ...], reduce_to: int | None = None,
                    class_weight: str | None = None) -> Predictions:
    """Predict every labelled test row (``y >= 0``) by a probe fitted on the other folds and
    every validation row by a probe fitted on all test folds. ``reduce_to``: PCA to that many
    components fitted on each training part first (the raw-input baseline)."""
    known = y >= 0
    val = known & np.isin(groups, list(split.validation))
    fold = np.array([split.fold.get(g, -1) for g in groups])
    test = known & (fold >= 0)
    pred = np.full(len(y), -1, dtype=np.int64)
    alphas_chosen, train_sizes = [], []
    for k in split.folds:
        part, train = test & (fold == k), test & (fold != k)
        if part.any() and train.any():
            pred[part], alpha = fit_predict(x[train], y[train], x[part], alphas, class_weight, reduce_to)
            alphas_chosen.append(alpha)
            train_sizes.append(int(train.sum()))
    scored = test & (pred >= 0)
    val_pred = (fit_predict(x[test], y[test], x[val], alphas, class_weight, reduce_to)[0]
                if val.any() and test.any() else np.zeros(0, np.int64))
    finite = [a for a in alphas_chosen if np.isfinite(a)]
    return Predictions(y[scored], pred[scored], units[scored], y[val], val_pred,
                       float(np.median(finite)) if finite else float("nan"),
                       int(np.median(train_sizes)) if train_sizes else 0)


def macro_f1(y: np.ndarray, pred: np.ndarray, classes: np.ndarray) -> float:
    """Macro F1 over ``classes`` that occur in ``y`` or ``pred`` (scikit-learn's definition,
    computed from counts: the bootstrap calls it thousands of times)."""
    if len(y) == 0:
        return float("nan")
    return _macro_f1_indexed(np.searchsorted(classes, y), np.searchsorted(classes, pred), len(classes))


def _macro_f1_indexed(yi: np.ndarray, pi: np.ndarray, n: int) -> float:
    """:func:`macro_f1` of class indices ``0..n-1``."""
    tp = np.bincount(yi[yi == pi], minlength=n).astype(float)
    support, predicted = np.bincount(yi, minlength=n), np.bincount(pi, minlength=n)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(n), where=present)
    return float(f1[present].mean())


def bootstrap_intervals(preds: Mapping[str, Sequence[Predictions]], reference: str, resamples: int, seed: int
                        ) -> dict[str, tuple[float, float, float, float]]:
    """Per model: the 95 % percentile interval (low, high) of its score and the paired one of
    ``reference``'s score minus its score, over resampled units. A model's score is the mean
    macro F1 of its probes (one per task; CT: per finding), whose test rows are the same rows
    in the same order for every model and task (the units of the first probe are used)."""
    first = next(iter(preds.values()))
    unit_ids, inverse = np.unique(first[0].unit, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(unit_ids))]
    classes = [np.unique(np.concatenate([p[t].y for p in preds.values()] + [p[t].pred for p in preds.values()]))
               for t in range(len(first))]
    indexed = {name: [(np.searchsorted(classes[t], p.y), np.searchsorted(classes[t], p.pred), len(classes[t]))
                      for t, p in enumerate(probes)] for name, probes in preds.items()}
    rng = np.random.default_rng(seed)
    samples = {name: np.empty(resamples) for name in preds}
    for b in range(resamples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(unit_ids), len(unit_ids))])
        for name, probes in indexed.items():
            samples[name][b] = np.mean([_macro_f1_indexed(yi[rows], pi[rows], n) for yi, pi, n in probes])
    out = {}
    for name in preds:
        low, high = np.nanpercentile(samples[name], [2.5, 97.5])
        m_low, m_high = np.nanpercentile(samples[reference] - samples[name], [2.5, 97.5])
        out[name] = (float(low), float(high), float(m_low), float(m_high))
    return out


def segment_units(groups: np.ndarray, frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Bootstrap unit of each pose row: its behaviour segment, a maximal run of one label in a
    sequence (rows ordered by sequence, then frame)."""
    order = np.lexsort((frames, groups))
    g, lab = groups[order], labels[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])
    units = np.empty(len(order), dtype=np.int64)
    units[order] = np.cumsum(new) - 1
    return units
