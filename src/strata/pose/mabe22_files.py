"""Write small MABe22-format files: mouse-triplet tracks and a test-label file (for tests and
fake datasets).

* :func:`write_mabe22_tracks`: ``{"vocabulary": [...], "sequences": {name: {"keypoints":
  [T, 3, 12, 2] float32, NaN gaps}}}`` saved as a pickled dict in a ``.npy`` (the layout
  of MABe22's ``mouse_triplet_train.npy``; :func:`strata.pose.readers.read_pose_file` reads
  it). The motion is the synthetic demo's (:mod:`strata.pose.demo`); without labels the
  file has an empty vocabulary and no ``annotations`` (like MABe22's training file), with
  labels the demo's per-frame ``behaviour`` row.
* :func:`write_mabe22_test_labels`: the test-label layout read by
  :func:`strata.pose.labels.read_task_labels` (``vocabulary``, ``task_type``,
  ``label_array`` [n_tasks, total frames] with NaN gaps, ``frame_number_map``), random but
  seeded labels for :data:`DEFAULT_TASKS` or any given tasks.

Both write atomically and give the same bytes for the same arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from strata.config import DemoPoseConfig
from strata.io.atomic import atomic_path
from strata.pose.demo import generate_demo_pose, to_mabe_dict
from strata.pose.keypoints import N_KEYPOINTS

_STREAM = 0x6C61626C  # "labl": keeps the label draws apart from the demo tracks' streams


@dataclass(frozen=True)
class FakeTask:
    """A task of a written label file.

    Args:
        name: vocabulary entry.
        kind: ``Discrete`` or ``Continuous`` (MABe22's ``task_type`` values).
        sequence_level: one value for the whole sequence (else segments over frames).
        classes: discrete tasks: values are ``0 .. classes-1``.
    """

    name: str
    kind: Literal["Discrete", "Continuous"]
    sequence_level: bool = False
    classes: int = 2


#: three binary frame-level behaviours, one continuous frame-level and one sequence-level task
DEFAULT_TASKS: tuple[FakeTask, ...] = (
    FakeTask("chases", "Discrete"),
    FakeTask("huddles", "Discrete"),
    FakeTask("oral_oral_contact", "Discrete"),
    FakeTask("time_of_day", "Continuous"),
    FakeTask("strain", "Discrete", sequence_level=True),
)


def sequence_names(n_sequences: int) -> list[str]:
    """Names of written sequences: ``mabe0000``, ``mabe0001``, ..."""
    return [f"mabe{i:04d}" for i in range(n_sequences)]


def _save(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, data, allow_pickle=True)  # our own plain dict, pickled as MABe22's files are


def write_mabe22_tracks(path: str | Path, n_sequences: int, n_frames: int, seed: int,
                        with_labels: bool = False, missing_fraction: float = 0.02) -> dict[str, int]:
    """Write ``n_sequences`` mouse-triplet sequences of ``n_frames`` frames ``[T, 3, 12, 2]``.

    Args:
        path: the ``.npy`` file.
        n_sequences, n_frames: how many sequences of how many frames.
        seed: seed of every draw.
        with_labels: add the demo's per-frame ``behaviour`` labels (``annotations`` [1, T]);
            False writes no labels at all, as MABe22's training file.
        missing_fraction: fraction of keypoints set to NaN (gaps of 1-10 frames).

    Returns:
        sequence name -> frame count (what :func:`write_mabe22_test_labels` takes).
    """
    cfg = DemoPoseConfig(n_sequences=n_sequences, n_frames=n_frames, n_agents=3, n_keypoints=N_KEYPOINTS,
                         arena_px=850.0, missing_fraction=missing_fraction)
    demo = generate_demo_pose(cfg, seed)
    names = sequence_names(n_sequences)
    data = to_mabe_dict(dict(zip(names, demo.values(), strict=True)))
    if not with_labels:
        data = {"vocabulary": [],
                "sequences": {name: {"keypoints": entry["keypoints"]} for name, entry in data["sequences"].items()}}
    _save(data, Path(path))
    return dict.fromkeys(names, n_frames)


def _frame_values(rng: np.random.Generator, task: FakeTask, n: int) -> np.ndarray:
    """Per-frame values of one sequence: segments of 20-200 frames."""
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(20, 201)))
    if task.kind == "Continuous":
        knots = rng.normal(0.0, 1.0, len(lengths) + 1)  # piecewise linear between segment ends
        edges = np.concatenate([[0], np.cumsum(lengths)])
        return np.interp(np.arange(n), edges, knots)
    values = rng.integers(0, task.classes, len(lengths)).astype(np.float64)
    return np.repeat(values, lengths)[:n]


def write_mabe22_test_labels(path: str | Path, sequences: Mapping[str, int], seed: int,
                             tasks: Sequence[FakeTask] = DEFAULT_TASKS, unlabelled_fraction: float = 0.05,
                             sequence_level_key: bool = False) -> None:
    """Write a label file in MABe22's test-label format for ``sequences`` (name -> frames).

    Args:
        path: the ``.npy`` file.
        sequences: name -> frame count; the frame map lists them in this order, contiguous.
        seed: seed of every draw.
        tasks: the vocabulary (default :data:`DEFAULT_TASKS`).
        unlabelled_fraction: frame-level tasks: this fraction of each sequence's frames is NaN
            (one gap at a random place); sequence-level tasks are labelled on every frame.
        sequence_level_key: also write ``sequence_level_tasks`` (not in MABe22's files; the
            reader otherwise takes MABe22's list ``experiment_day``, ``strain``, ``lights``).
    """
    names = list(sequences)
    lengths = np.array([int(sequences[n]) for n in names], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    label_array = np.full((len(tasks), int(lengths.sum())), np.nan, np.float32)
    for t, task in enumerate(tasks):
        for s, (start, n) in enumerate(zip(starts, lengths, strict=True)):
            rng = np.random.default_rng([seed, _STREAM, t, s])
            if task.sequence_level:
                label_array[t, start:start + n] = float(rng.integers(0, task.classes)) \
                    if task.kind == "Discrete" else rng.normal()
                continue
            values = _frame_values(rng, task, int(n))
            gap = round(unlabelled_fraction * int(n))
            if gap:
                at = int(rng.integers(0, n - gap + 1))
                values[at:at + gap] = np.nan
            label_array[t, start:start + n] = values
    data = {
        "vocabulary": [task.name for task in tasks],
        "task_type": [task.kind for task in tasks],
        "label_array": label_array,
        "frame_number_map": {name: (int(a), int(a + n)) for name, a, n in zip(names, starts, lengths, strict=True)},
    }
    if sequence_level_key:
        data["sequence_level_tasks"] = [task.name for task in tasks if task.sequence_level]
    _save(data, Path(path))
