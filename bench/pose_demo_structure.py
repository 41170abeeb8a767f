"""Is the pose demo's structure decodable, and at the right time scale? Hand-made features,
no model.

Writes the demo (``demo.pose`` and ``seed`` of ``config/config.yaml``, or the sizes given)
into a temporary folder, reads the tracks and the MABe22-format label file back the way the
pipeline does, and probes every label task with a class-balanced ridge classifier on

* ``frame``: a per-frame kinematic vector per mouse (centre speed, heading change, body
  length, the four paws and the tail tip relative to the centre in the body frame and their
  change since the last frame, forepaw-to-nose distance) plus the three pairwise centre
  distances;
* ``w8`` / ``w32`` / ``w128``: the same averaged over a centred window of 8 / 32 / 128 frames
  (within the sequence);
* ``seq``: sequence-level tasks only, one sample per sequence (the mean over all frames), as
  :mod:`strata.evaluation.tasks` probes them.

Split by sequence: grouped k-fold over sequences (every sequence tested once); samples every
4th frame (as the embeddings); unlabelled (NaN) frames left out. Score: macro F1 over the
pooled out-of-fold predictions; ``chance``: the same for a stratified random guess
(scikit-learn ``DummyClassifier``) on the same folds. Expected: frame tasks (turning, gait
phase) best on ``frame``, the segment action in between, sequence tasks (strain, lights) best
on long windows.

    .venv/bin/python bench/pose_demo_structure.py [--sequences 24 --frames 576 --folds 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from scipy.ndimage import uniform_filter1d
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from strata.config import load_config
from strata.pose.demo import write_demo_pose
from strata.pose.keypoints import KEYPOINT_INDEX as K
from strata.pose.labels import read_task_labels
from strata.pose.processing import interpolate_missing
from strata.pose.readers import read_pose_file

REPO = Path(__file__).resolve().parents[1]
WINDOWS = (8, 32, 128)
STRIDE = 4
PAWS = ("forepaw_left", "forepaw_right", "hindpaw_left", "hindpaw_right", "tail_tip")


def frame_features(keypoints: np.ndarray) -> np.ndarray:
    """Per-frame kinematic features ``[T, F]`` of filled keypoints ``[T, A, K, 2]``."""
    centre = keypoints[:, :, K["center"]]
    axis = keypoints[:, :, K["nose"]] - keypoints[:, :, K["tail_base"]]
    heading = np.unwrap(np.arctan2(axis[..., 1], axis[..., 0]), axis=0)
    cos, sin = np.cos(heading)[..., None], np.sin(heading)[..., None]
    rel = keypoints[:, :, [K[p] for p in PAWS]] - centre[:, :, None]
    body = np.stack([cos * rel[..., 0] + sin * rel[..., 1], -sin * rel[..., 0] + cos * rel[..., 1]], -1)
    body = body.reshape(*body.shape[:2], -1)  # [T, A, 2 * len(PAWS)]
    speed = np.linalg.norm(np.diff(centre, axis=0, prepend=centre[:1]), axis=-1)
    turn = np.clip(np.diff(heading, axis=0, prepend=heading[:1]), -0.3, 0.3)  # no wall flips
    length = np.linalg.norm(axis, axis=-1)
    reach = np.linalg.norm(
        keypoints[:, :, [K["forepaw_left"], K["forepaw_right"]]] - keypoints[:, :, K["nose"]][:, :, None], axis=-1
    ).mean(-1)
    per_agent = np.concatenate(
        [speed[..., None], np.log(speed + 0.5)[..., None], turn[..., None], np.abs(turn)[..., None], length[..., None], reach[..., None], body,
         np.diff(body, axis=0, prepend=body[:1])], axis=-1)
    a = centre.shape[1]
    pairs = [np.linalg.norm(centre[:, i] - centre[:, j], axis=-1) for i in range(a) for j in range(i + 1, a)]
    return np.concatenate([per_agent.reshape(len(keypoints), -1), np.stack(pairs, -1)], axis=-1)


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> tuple[float, float]:
    """(macro F1, chance macro F1) of out-of-fold predictions, grouped by sequence."""
    keep = np.isfinite(y)
    x, y, groups = x[keep], y[keep].astype(int), groups[keep]
    pred, guess = np.empty_like(y), np.empty_like(y)
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0, class_weight="balanced"))
        pred[test] = model.fit(x[train], y[train]).predict(x[test])
        guess[test] = DummyClassifier(strategy="stratified", random_state=0).fit(x[train], y[train]).predict(x[test])
    return f1_score(y, pred, average="macro"), f1_score(y, guess, average="macro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=None, help="default: demo.pose.n_sequences")
    parser.add_argument("--frames", type=int, default=None, help="default: demo.pose.n_frames")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    args = parser.parse_args()
    cfg = load_config(REPO / "config" / "config.yaml")
    demo = replace(cfg.demo.pose, n_sequences=args.sequences or cfg.demo.pose.n_sequences,
                   n_frames=args.frames or cfg.demo.pose.n_frames)
    seed = cfg.seed if args.seed is None else args.seed
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        npy, labels_path = Path(tmp) / "tracks.npy", Path(tmp) / "labels.npy"
        write_demo_pose(demo, seed, npy, Path(tmp) / "tracks.parquet", labels_path)
        generated = time.perf_counter() - start
        sequences = read_pose_file(npy)
        labels = read_task_labels(labels_path)
    feats: dict[str, list[np.ndarray]] = {"frame": [], **{f"w{w}": [] for w in WINDOWS}}
    seq_means, columns, groups = [], [], []
    for g, (name, seq) in enumerate(sorted(sequences.items())):
        filled, _ = interpolate_missing(seq.keypoints, name)
        x = frame_features(filled.astype(np.float64))
        frames = np.arange(0, len(x), STRIDE)
        feats["frame"].append(x[frames])
        for w in WINDOWS:
            feats[f"w{w}"].append(uniform_filter1d(x, size=w, axis=0, mode="nearest")[frames])
        seq_means.append(x.mean(axis=0))
        columns.append(labels.frame_columns(np.full(len(frames), name), frames))
        groups.append(np.full(len(frames), g))
    x_by = {key: np.concatenate(v) for key, v in feats.items()}
    col, grp = np.concatenate(columns), np.concatenate(groups)
    names = sorted(sequences)
    header = ["task", "level", "classes", "chance", *x_by, "seq"]
    rows = []
    for task in labels.tasks:
        y = labels.targets(task, col)
        scores = {key: probe(x, y, grp, args.folds) for key, x in x_by.items()}
        seq_score = "-"
        if task.sequence_level:
            ys = labels.sequence_targets(task, names)
            seq_score = f"{probe(np.stack(seq_means), ys, np.arange(len(names)), args.folds)[0]:.2f}"
        level = "sequence" if task.sequence_level else ("segment" if task.name == "action" else "frame")
        chance = np.mean([c for _, c in scores.values()])
        rows.append([task.name, level, str(len(np.unique(y[np.isfinite(y)]))), f"{chance:.2f}",
                     *(f"{f1:.2f}" for f1, _ in scores.values()), seq_score])
    print(f"demo {demo.n_sequences} x {demo.n_frames} frames, seed {seed}, {args.folds}-fold by sequence, "
          f"every {STRIDE}th frame; generate + write {generated:.1f} s, total {time.perf_counter() - start:.1f} s")
    print("macro F1 (pooled out-of-fold)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
