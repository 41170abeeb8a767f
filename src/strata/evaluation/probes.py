"""Ridge linear probes on frozen features (hBehaveMAE's protocol, made deterministic).

Features are (optionally reduced by PCA and) standardised with statistics of the training
part only; a ``RidgeClassifierCV`` chooses its penalty from the fixed ``alphas`` grid by
efficient leave-one-out on the training part (closed form, no randomness), and predicts
the test part. Scores: accuracy and macro F1 (scikit-learn). Continuous targets:
``RidgeCV`` over the same ``alphas`` on the same features (:func:`regression_probe`). Which
rows train and which test: :mod:`strata.evaluation.protocol`.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def pca(components: int, x_train: np.ndarray) -> PCA:
    """An exact, deterministic PCA to ``components`` (capped by the training part's shape):
    the eigenvectors of the covariance when there are more samples than features (a
    d x d problem instead of an SVD of the whole n x d matrix), else a full SVD."""
    n, d = x_train.shape
    solver = "covariance_eigh" if n > d else "full"
    return PCA(n_components=min(components, n, d), svd_solver=solver)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                alphas: tuple[float, ...], class_weight: str | None = None,
                reduce_to: int | None = None) -> tuple[np.ndarray, float]:
    """Predictions for ``x_test`` and the chosen alpha (a single training class predicts it);
    ``class_weight="balanced"`` weighs classes inversely to their training frequency;
    ``reduce_to``: PCA (fitted on ``x_train``) to that many components before the probe."""
    classes = np.unique(y_train)
    if len(classes) == 1:
        return np.full(len(x_test), classes[0]), float("nan")
    steps = [pca(reduce_to, x_train)] if reduce_to is not None else []
    steps += [StandardScaler(), RidgeClassifierCV(alphas=np.asarray(alphas, dtype=float), class_weight=class_weight)]
    probe = make_pipeline(*steps).fit(x_train, y_train)
    return probe.predict(x_test), float(probe[-1].alpha_)


def regression_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alphas: tuple[float, ...],
                     reduce_to: int | None = None) -> np.ndarray:
    """Ridge regression (alpha by efficient leave-one-out on the training part) on
    standardised features (after PCA to ``reduce_to`` when given): predictions for ``x_test``."""
    steps = [pca(reduce_to, x_train)] if reduce_to is not None else []
    probe = make_pipeline(*steps, StandardScaler(), RidgeCV(alphas=np.asarray(alphas, dtype=float)))
    return probe.fit(x_train, y_train).predict(x_test)


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    return (float(accuracy_score(y_true, y_pred)),
            float(f1_score(y_true, y_pred, average="macro", zero_division=0)))
