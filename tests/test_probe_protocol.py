"""The probe protocol (validation groups, folds, bootstrap), the raw baselines and margins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strata.evaluation.baselines import PoseBaselines, kinematics, pose_token_spans
from strata.evaluation.margins import higher_is_better, margin_table
from strata.evaluation.protocol import (
    bootstrap_intervals,
    cross_validated,
    group_split,
    macro_f1,
    segment_units,
)
from strata.pose.keypoints import KEYPOINT_INDEX, N_KEYPOINTS

ALPHAS = (0.1, 1.0, 10.0, 100.0)


def test_group_split_sets_validation_aside_and_tests_every_other_group_once():
    names = [f"s{i:02d}" for i in range(20)]
    split = group_split(names, folds=4, validation_fraction=0.2)
    assert split.validation == {"s04", "s09", "s14", "s19"}  # every 5th, spread over the names
    assert set(split.fold) == set(names) - split.validation and split.folds == [0, 1, 2, 3]
    assert sorted(np.bincount(list(split.fold.values()))) == [4, 4, 4, 4]
    strata = {n: ("a" if i < 10 else "b") for i, n in enumerate(names)}
    stratified = group_split(names, 2, 0.2, strata)
    assert {strata[n] for n in stratified.validation} == {"a", "b"}  # each stratum gives validation groups
    with pytest.raises(ValueError, match="need at least 2"):
        group_split(["a", "b"], 2, 0.5)


def _grouped(informative: bool, n_groups: int = 20, per_group: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"g{i:02d}" for i in range(n_groups)], per_group)
    y = np.tile(np.repeat([0, 1, 2], per_group // 3), n_groups)
    x = rng.normal(size=(len(y), 4))
    if informative:
        x[np.arange(len(y)), y] += 3.0
    return x, y, groups


def test_cross_validated_predicts_every_test_group_from_the_others_and_keeps_validation_out():
    x, y, groups = _grouped(True)
    split = group_split(sorted(set(groups)), 4, 0.2)
    units = segment_units(groups, np.tile(np.arange(30), 20), y)
    p = cross_validated(x, y, groups, units, split, ALPHAS)
    assert len(p.y) == 16 * 30 and len(p.val_y) == 4 * 30  # validation rows never in the test pool
    assert macro_f1(p.y, p.pred, np.arange(3)) > 0.9
    again = cross_validated(x, y, groups, units, split, ALPHAS)
    assert np.array_equal(again.pred, p.pred)  # deterministic
    noise = cross_validated(_grouped(False)[0], y, groups, units, split, ALPHAS)
    assert macro_f1(noise.y, noise.pred, np.arange(3)) < 0.5
    reduced = cross_validated(x, y, groups, units, split, ALPHAS, reduce_to=3)  # PCA inside each fold
    assert macro_f1(reduced.y, reduced.pred, np.arange(3)) > 0.8


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    assert macro_f1(y, pred, np.arange(4)) == pytest.approx(f1_score(y, pred, average="macro"))


def test_bootstrap_margin_excludes_zero_only_for_a_real_difference():
    x, y, groups = _grouped(True)
    noise = _grouped(False, seed=5)[0]
    split = group_split(sorted(set(groups)), 4, 0.2)
    units = segment_units(groups, np.tile(np.arange(30), 20), y)
    preds = {name: [cross_validated(f, y, groups, units, split, ALPHAS)]
             for name, f in (("trained", x), ("noise", noise), ("same", x))}
    ci = bootstrap_intervals(preds, "trained", 300, seed=0)
    assert ci["noise"][2] > 0.3  # margin interval far above 0
    assert ci["same"][2:] == (0.0, 0.0)  # identical predictions: no margin at all
    low, high = ci["trained"][:2]
    assert low < macro_f1(preds["trained"][0].y, preds["trained"][0].pred, np.arange(3)) < high + 1e-9


def test_segment_units_are_runs_of_one_label_per_sequence():
    groups = np.array(["a", "a", "a", "b", "b", "a"])
    frames = np.array([0, 1, 2, 0, 1, 3])
    labels = np.array([0, 0, 1, 1, 1, 1])
    units = segment_units(groups, frames, labels)
    assert units[0] == units[1] and units[2] == units[5] != units[0] and units[3] == units[4] != units[2]


def test_kinematic_features_measure_speed_distance_and_body_length():
    t, a = 5, 2
    k = np.zeros((1, t, a, N_KEYPOINTS, 2))
    k[0, :, 0, :, 0] = np.arange(t)[:, None] * 3.0  # agent 0 moves 3 px/frame along x
    k[0, :, 1, :, 1] = 40.0  # agent 1 stands 40 px away along y
    k[0, :, :, KEYPOINT_INDEX["nose"], 0] += 10.0  # nose 10 px ahead of the tail base
    feats = kinematics(k.reshape(1, t, -1))
    speed, length, distance = feats[0, :, :a], feats[0, :, a:2 * a], feats[0, :, -1]
    assert np.allclose(speed[:, 0], 3.0) and np.allclose(speed[:, 1], 0.0)
    assert np.allclose(length, 10.0) and np.allclose(distance, np.hypot(np.arange(t) * 3.0, 40.0))


def test_pose_token_spans_take_the_frames_of_each_rows_time_token():
    windows = np.arange(2 * 8 * 3, dtype=float).reshape(2, 8, 3)  # 2 windows, 8 frames, 3 features
    rows = pd.DataFrame({"sample_id": ["1", "0"], "token": [3, 0], "time_tokens": [4, 4]})
    spans = pose_token_spans(rows, windows)
    assert np.array_equal(spans[0], windows[1, 6:8].reshape(-1)) and np.array_equal(spans[1], windows[0, :2].reshape(-1))


def test_pose_pca_baseline_reads_the_velocity_channels_the_run_embeds(pose_cache):
    plain, moving = PoseBaselines(pose_cache), PoseBaselines(pose_cache, velocity_gain=30.0)
    w = plain.windows
    assert np.array_equal(plain.inputs, w)
    assert moving.inputs.shape == (*w.shape[:2], 2 * w.shape[2])
    assert np.allclose(moving.inputs[..., :w.shape[2]], w)
    assert np.allclose(moving.inputs[:, 1:, w.shape[2]:], 30.0 * np.diff(w, axis=1), atol=1e-5)
    assert np.array_equal(moving.kinematic, plain.kinematic)  # the domain baseline reads positions


def test_margin_table_compares_with_the_strongest_non_domain_baseline_in_the_right_direction():
    rows = [("m", "r", 5, "0", model, metric, value) for model, metric, value in (
        ("trained", "probe_macro_f1", 0.8), ("pca", "probe_macro_f1", 0.6), ("random_init", "probe_macro_f1", 0.7),
        ("kinematic", "probe_macro_f1", 0.95), ("constant", "probe_macro_f1", 0.2),
        ("trained", "recon_mse", 0.1), ("pca", "recon_mse", 0.3), ("copy_previous", "recon_mse", 0.2),
        ("trained", "probe_n_test", 40.0), ("pca", "probe_n_test", 40.0))]
    long = pd.DataFrame(rows, columns=["family", "run", "step", "level", "model", "metric", "value"])
    table = margin_table(long).set_index("metric")
    assert table.loc["probe_macro_f1", "strongest_baseline"] == "random_init"  # kinematic is a domain baseline
    assert table.loc["probe_macro_f1", "margin"] == pytest.approx(0.1)
    assert table.loc["recon_mse", "strongest_baseline"] == "copy_previous"  # lower error is stronger
    assert table.loc["recon_mse", "margin"] == pytest.approx(0.1)
    assert "probe_n_test" not in table.index
    assert higher_is_better("task_f1/chases") and not higher_is_better("task_mse/time") \
        and not higher_is_better("border_mse_ratio")
