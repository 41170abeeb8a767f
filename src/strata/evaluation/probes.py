"""Ridge linear probes on frozen embeddings (hBehaveMAE's protocol, made deterministic).

Features are standardised with statistics of the training part only; a
``RidgeClassifierCV`` chooses its penalty from the fixed ``alphas`` grid by efficient
leave-one-out on the training part (closed form, no randomness), and predicts the test
part. Scores: accuracy and macro F1 (scikit-learn, classes of the test labels and the
predictions). Pose: train/test split by sequence. CT (a dozen studies in the demo): every
study is predicted once by a probe fitted on the others, scores over the pooled
predictions; the folds are *stratified* (:func:`stratified_folds`: the i-th study of each
class, in study-id order, goes to fold ``i % k``), so every training part keeps the class
balance. Plain leave-one-out is available but biased on balanced classes: holding out one
study makes its class the minority of the training part, so an uninformative probe scores
below chance (0 % on three balanced classes instead of 33 %).

Tasks of a MABe22 label file (:mod:`strata.evaluation.tasks`) use the same classifier with
``class_weight="balanced"`` for discrete tasks (as the MABe22 / hBehaveMAE evaluators'
``RidgeClassifier``), and for continuous tasks :func:`regression_probe`: ``RidgeCV`` over the
same ``alphas`` (efficient leave-one-out, no randomness) on the same standardised features,
scored by MSE and R^2 on the test part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class ProbeResult:
    """Scores of one probe; ``alpha`` is the (median, for leave-one-out) chosen penalty."""

    accuracy: float
    macro_f1: float
    alpha: float
    n_train: int
    n_test: int


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                alphas: tuple[float, ...], class_weight: str | None = None) -> tuple[np.ndarray, float]:
    """Predictions for ``x_test`` and the chosen alpha (a single training class predicts it);
    ``class_weight="balanced"`` weighs classes inversely to their training frequency."""
    classes = np.unique(y_train)
    if len(classes) == 1:
        return np.full(len(x_test), classes[0]), float("nan")
    scaler = StandardScaler().fit(x_train)
    probe = RidgeClassifierCV(alphas=np.asarray(alphas, dtype=float), class_weight=class_weight)
    probe.fit(scaler.transform(x_train), y_train)
    return probe.predict(scaler.transform(x_test)), float(probe.alpha_)


@dataclass(frozen=True)
class RegressionResult:
    """Scores of one regression probe on the test part."""

    mse: float
    r2: float
    alpha: float
    n_train: int
    n_test: int


def regression_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     alphas: tuple[float, ...]) -> RegressionResult:
    """Ridge regression (alpha by efficient leave-one-out on the training part) on
    standardised features; MSE and R^2 on the test part (R^2 is NaN for a constant test target)."""
    scaler = StandardScaler().fit(x_train)
    probe = RidgeCV(alphas=np.asarray(alphas, dtype=float)).fit(scaler.transform(x_train), y_train)
    pred = probe.predict(scaler.transform(x_test))
    r2 = float(r2_score(y_test, pred)) if len(y_test) > 1 and np.ptp(y_test) > 0 else float("nan")
    return RegressionResult(float(mean_squared_error(y_test, pred)), r2, float(probe.alpha_),
                            len(y_train), len(y_test))


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    return (float(accuracy_score(y_true, y_pred)),
            float(f1_score(y_true, y_pred, average="macro", zero_division=0)))


def split_probe(x: np.ndarray, y: np.ndarray, is_test: np.ndarray, alphas: tuple[float, ...]) -> ProbeResult:
    """Fit on ``~is_test``, score on ``is_test`` (rows with label < 0 are dropped)."""
    known = y >= 0
    train, test = known & ~is_test, known & is_test
    if not train.any() or not test.any():
        raise ValueError(f"probe split has {train.sum()} training and {test.sum()} test rows with labels")
    pred, alpha = fit_predict(x[train], y[train], x[test], alphas)
    acc, f1 = scores(y[test], pred)
    return ProbeResult(acc, f1, alpha, int(train.sum()), int(test.sum()))


def stratified_folds(y: np.ndarray, k: int) -> np.ndarray:
    """Fold of every sample: the i-th sample of each class (in the given order) -> ``i % k``."""
    folds = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        folds[members] = np.arange(len(members)) % k
    return folds


def cross_validated_probe(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alphas: tuple[float, ...]) -> ProbeResult:
    """Each fold predicted by a probe fitted on the other folds; scores over all predictions."""
    pred, chosen, train_sizes = np.empty_like(y), [], []
    for fold in np.unique(folds):
        test = folds == fold
        pred[test], alpha = fit_predict(x[~test], y[~test], x[test], alphas)
        chosen.append(alpha)
        train_sizes.append(int((~test).sum()))
    acc, f1 = scores(y, pred)
    alpha = float(np.nanmedian(chosen)) if not np.all(np.isnan(chosen)) else float("nan")
    return ProbeResult(acc, f1, alpha, int(np.median(train_sizes)), len(y))


def leave_one_out_probe(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> ProbeResult:
    """Each sample predicted by a probe fitted on all others."""
    return cross_validated_probe(x, y, np.arange(len(y)), alphas)
