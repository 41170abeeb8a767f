"""The pose demo's labels at three time scales: determinism, the MABe22 label file, coverage
and cheap checks that each label is decodable from the keypoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from strata.config import DemoPoseConfig
from strata.pose.demo import (
    FRAME_TASKS,
    SEQUENCE_TASKS,
    DemoPose,
    generate_demo,
    generate_demo_pose,
    write_demo_pose,
)
from strata.pose.keypoints import BEHAVIOURS, KEYPOINT_INDEX
from strata.pose.labels import read_task_labels
from strata.pose.processing import interpolate_missing
from strata.pose.readers import read_pose_file

DEMO = DemoPoseConfig(
    n_sequences=24, n_frames=576, n_agents=3, n_keypoints=12, arena_px=850.0, missing_fraction=0.02
)
SEED = 1234


@pytest.fixture(scope="module")
def demo() -> DemoPose:
    return generate_demo(DEMO, SEED)


@pytest.fixture(scope="module")
def filled(demo: DemoPose) -> dict[str, np.ndarray]:
    """Keypoints with the NaN gaps interpolated, per sequence."""
    return {name: interpolate_missing(seq.keypoints, name)[0] for name, seq in demo.sequences.items()}


def _heading(keypoints: np.ndarray) -> np.ndarray:
    """Unwrapped heading ``[T, A]`` of the tail-base-to-nose axis."""
    axis = keypoints[:, :, KEYPOINT_INDEX["nose"]] - keypoints[:, :, KEYPOINT_INDEX["tail_base"]]
    return np.unwrap(np.arctan2(axis[..., 1], axis[..., 0]), axis=0)


def test_labels_are_deterministic_from_the_seed(tmp_path: Path) -> None:
    small = replace(DEMO, n_sequences=3, n_frames=200)
    files = []
    for run in ("a", "b"):
        root = tmp_path / run
        write_demo_pose(small, 7, root / "p.npy", root / "p.parquet", root / "labels.npy")
        files.append((root / "p.npy").read_bytes() + (root / "labels.npy").read_bytes())
    assert files[0] == files[1]
    one, other = generate_demo(small, 7).labels, generate_demo(small, 8).labels
    assert not all(
        np.array_equal(one[name]["action"], other[name]["action"]) for name in one
    )
    # the labels are those of the same generation as the tracks
    tracks = generate_demo_pose(small, 7)
    assert all(np.array_equal(tracks[n].labels, one[n]["action"]) for n in one)


def test_label_file_reads_back_with_every_task(tmp_path: Path, demo: DemoPose) -> None:
    npy, labels_path = tmp_path / "tracks.npy", tmp_path / "test_labels.npy"
    write_demo_pose(DEMO, SEED, npy, tmp_path / "tracks.parquet", labels_path)
    labels = read_task_labels(labels_path)
    assert [t.name for t in labels.tasks] == [*FRAME_TASKS, *SEQUENCE_TASKS]
    assert all(t.kind == "discrete" for t in labels.tasks)
    assert {t.name for t in labels.tasks if t.sequence_level} == {"strain", "lights"}
    tracks = read_pose_file(npy)
    assert sorted(labels.frame_number_map) == sorted(tracks)
    frames = np.arange(DEMO.n_frames)
    for name, seq in tracks.items():
        columns = labels.frame_columns(np.full(DEMO.n_frames, name), frames)
        for task in labels.tasks:
            np.testing.assert_array_equal(labels.targets(task, columns), demo.labels[name][task.name])
        # the track file's behaviour annotations are the action task
        np.testing.assert_array_equal(seq.labels, demo.labels[name]["action"])
    names = sorted(tracks)
    for task in labels.tasks:
        if task.sequence_level:
            expected = [demo.labels[n][task.name][0] for n in names]
            np.testing.assert_array_equal(labels.sequence_targets(task, names), expected)


def test_every_class_is_in_several_sequences(demo: DemoPose) -> None:
    for task, n_classes in {**FRAME_TASKS, **SEQUENCE_TASKS}.items():
        for value in range(n_classes):
            holding = sum(np.any(labels[task] == value) for labels in demo.labels.values())
            assert holding >= 4, f"{task} = {value} in only {holding} sequences"
    assert FRAME_TASKS["action"] == len(BEHAVIOURS) >= 4
    # the frame tasks are defined only while mouse 0 walks: unlabelled (NaN) elsewhere
    turning = np.concatenate([labels["turning"] for labels in demo.labels.values()])
    assert 0.2 < np.isnan(turning).mean() < 0.8


def test_turning_is_the_heading_change(demo: DemoPose, filled: dict[str, np.ndarray]) -> None:
    guesses, labels = [], []
    for name, keypoints in filled.items():
        turn = np.diff(_heading(keypoints)[:, 0], prepend=0.0)
        guess = 1 + (turn > 0.035).astype(int) - (turn < -0.035).astype(int)
        label = demo.labels[name]["turning"]
        known = np.isfinite(label)
        guesses.append(guess[known])
        labels.append(label[known].astype(int))
    assert balanced_accuracy_score(np.concatenate(labels), np.concatenate(guesses)) > 0.9


def test_gait_phase_is_the_paw_swing(demo: DemoPose, filled: dict[str, np.ndarray]) -> None:
    """Phases 0-1 (first half of the cycle): left forepaw ahead of its mean body position."""
    hits, total = 0, 0
    for name, keypoints in filled.items():
        heading = _heading(keypoints)[:, 0]
        paw = keypoints[:, 0, KEYPOINT_INDEX["forepaw_left"]] - keypoints[:, 0, KEYPOINT_INDEX["center"]]
        forward = paw[:, 0] * np.cos(heading) + paw[:, 1] * np.sin(heading)
        label = demo.labels[name]["gait_phase"]
        walking = np.isfinite(label) & (demo.labels[name]["action"] != BEHAVIOURS.index("huddle"))
        if not walking.any():  # mouse 0 may never walk in a calm sequence
            continue
        ahead = forward > np.median(forward[walking])
        hits += int((ahead[walking] == (label[walking] < 2)).sum())
        total += int(walking.sum())
    assert hits / total > 0.8


def test_action_decodes_from_speed_features(demo: DemoPose, filled: dict[str, np.ndarray]) -> None:
    """Speeds, distances and forepaw reach, averaged over 8 frames: a ridge probe split by
    sequence beats chance (0.2 macro F1 for 5 classes) by a wide margin."""
    xs, ys, groups = [], [], []
    kernel = np.ones(8) / 8
    for g, (name, kp) in enumerate(filled.items()):
        centre = kp[:, :, KEYPOINT_INDEX["center"]]
        speed = np.linalg.norm(np.diff(centre, axis=0, prepend=centre[:1]), axis=-1)
        pairs = [np.linalg.norm(centre[:, i] - centre[:, j], axis=-1) for i, j in ((0, 1), (0, 2), (1, 2))]
        reach = np.linalg.norm(kp[:, :, KEYPOINT_INDEX["forepaw_left"]] - kp[:, :, KEYPOINT_INDEX["nose"]], axis=-1)
        length = np.linalg.norm(kp[:, :, KEYPOINT_INDEX["nose"]] - kp[:, :, KEYPOINT_INDEX["tail_base"]], axis=-1)
        x = np.concatenate([speed, np.log(speed + 0.5), np.stack(pairs, -1), reach, length], axis=-1)
        x = np.apply_along_axis(np.convolve, 0, x, kernel, mode="same")
        xs.append(x[::4])
        ys.append(demo.labels[name]["action"][::4])
        groups.append(np.full(len(x[::4]), g))
    x, y, group = np.concatenate(xs), np.concatenate(ys).astype(int), np.concatenate(groups)
    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0, class_weight="balanced"))
    pred = cross_val_predict(model, x, y, groups=group, cv=GroupKFold(n_splits=4))
    assert f1_score(y, pred, average="macro") > 0.2 + 0.4


def test_sequence_properties_show_over_the_whole_sequence(
    demo: DemoPose, filled: dict[str, np.ndarray]
) -> None:
    """strain: larger heads (ear to ear); lights off: faster mice. A median split of the
    sequence means recovers each for most sequences."""
    width, speed, strain, lights = [], [], [], []
    for name, kp in filled.items():
        ears = kp[:, :, KEYPOINT_INDEX["ear_left"]] - kp[:, :, KEYPOINT_INDEX["ear_right"]]
        width.append(np.linalg.norm(ears, axis=-1).mean())
        centre = kp[:, :, KEYPOINT_INDEX["center"]]
        speed.append(np.linalg.norm(np.diff(centre, axis=0), axis=-1).mean())
        strain.append(demo.labels[name]["strain"][0])
        lights.append(demo.labels[name]["lights"][0])
    width, speed = np.asarray(width), np.asarray(speed)
    assert np.mean((width > np.median(width)) == (np.asarray(strain) == 1)) >= 0.8
    assert np.mean((speed > np.median(speed)) == (np.asarray(lights) == 0)) >= 0.75
