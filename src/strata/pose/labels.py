"""Read a label file in MABe22's test-label format (``mouse_triplets_test_labels.npy``).

The file is a pickled dict inside a ``.npy`` (as the MABe22 evaluator and hBehaveMAE's
``hierAS-eval`` read it); it is loaded with :func:`strata.io.safe_npy.load_npy_safely`,
never with ``np.load(allow_pickle=True)``. Keys:

======================  ======================================================================
key                     content
======================  ======================================================================
``vocabulary``          list of task names (``strain``, ``lights``, ``chases``, ...)
``task_type``           list, one per task: ``Discrete`` (class labels) or ``Continuous``
``label_array``         numeric ``[n_tasks, total_frames]``; NaN where a frame is unlabelled
``frame_number_map``    ``{sequence: (start, end)}``: the sequence's frames ``0 .. end-start-1``
                        are columns ``start .. end-1`` of ``label_array``
``sequence_level_tasks``  optional (not in MABe22's files): the tasks scored once per sequence;
                        without it, the MABe22 / hBehaveMAE list :data:`MABE22_SEQUENCE_TASKS`
                        (those of them in the vocabulary)
======================  ======================================================================

Problems are :class:`~strata.pose.errors.PoseFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from strata.io.safe_npy import UnsafeNpyError, load_npy_safely
from strata.pose.errors import PoseFormatError

log = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("vocabulary", "task_type", "label_array", "frame_number_map")
#: sequence-level tasks of MABe22's mouse triplets (hBehaveMAE ``hierAS-eval/eval/metadata/jax_tasks.json``)
MABE22_SEQUENCE_TASKS: tuple[str, ...] = ("experiment_day", "strain", "lights")


@dataclass(frozen=True)
class LabelTask:
    """One task of a label file.

    Attributes:
        name: vocabulary entry.
        kind: ``discrete`` (a ridge classifier, F1) or ``continuous`` (ridge regression, MSE).
        sequence_level: scored once per sequence (pooled), else per frame.
        row: row of ``label_array``.
    """

    name: str
    kind: Literal["discrete", "continuous"]
    sequence_level: bool
    row: int


@dataclass(frozen=True)
class TaskLabels:
    """A validated label file.

    Attributes:
        path: the file it was read from (named in later errors).
        tasks: every task of the vocabulary, in file order.
        label_array: float ``[n_tasks, total_frames]``, NaN where unlabelled.
        frame_number_map: sequence -> (start, end) columns of ``label_array``.
    """

    path: Path
    tasks: tuple[LabelTask, ...]
    label_array: np.ndarray
    frame_number_map: dict[str, tuple[int, int]]

    def frame_columns(self, sequences: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Column of ``label_array`` of every (sequence, frame) pair; -1 where the sequence is
        not in the frame map.

        Raises:
            PoseFormatError: a frame lies outside its sequence's span in the frame map (the
                pose data and the label file disagree on that sequence).
        """
        sequences = pd.Series(np.asarray(sequences).astype(str))
        frames = np.asarray(frames, dtype=np.int64)
        start = sequences.map({k: v[0] for k, v in self.frame_number_map.items()})
        known = start.notna().to_numpy()
        start = start.fillna(0).to_numpy(np.int64)
        length = sequences.map({k: v[1] - v[0] for k, v in self.frame_number_map.items()}).fillna(0)
        bad = known & ((frames < 0) | (frames >= length.to_numpy(np.int64)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PoseFormatError(
                f"{self.path}: sequence {sequences[i]!r} has {int(length[i])} frames in "
                f"'frame_number_map', but the pose data has its frame {int(frames[i])} "
                "(the pose file and the label file disagree on this sequence)"
            )
        return np.where(known, start + frames, -1)

    def targets(self, task: LabelTask, columns: np.ndarray) -> np.ndarray:
        """Labels of ``task`` at :meth:`frame_columns` ``columns`` (float64; NaN where
        unlabelled or -1)."""
        values = self.label_array[task.row, np.maximum(columns, 0)].astype(np.float64)
        return np.where(columns >= 0, values, np.nan)

    def sequence_targets(self, task: LabelTask, sequences: list[str]) -> np.ndarray:
        """One label per sequence, over all its labelled frames (NaN if none): the mean for
        continuous tasks; for discrete tasks the most frequent value (ties: the larger, so a
        binary task is 1 when at least half its labelled frames are, as hBehaveMAE's
        threshold of 0.5 on the mean)."""
        out = np.full(len(sequences), np.nan)
        for i, name in enumerate(sequences):
            if name not in self.frame_number_map:
                continue
            start, end = self.frame_number_map[name]
            values = self.label_array[task.row, start:end]
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            if task.kind == "continuous":
                out[i] = float(values.mean())
            else:
                classes, counts = np.unique(values, return_counts=True)
                out[i] = float(classes[np.flatnonzero(counts == counts.max())[-1]])
        return out


def _fail(path: Path, problem: str) -> PoseFormatError:
    return PoseFormatError(f"{path}: not a MABe22 test-label file: {problem}")


def read_task_labels(path: str | Path) -> TaskLabels:
    """Read and check a MABe22-format label file (layout in the module docstring).

    Raises:
        PoseFormatError: naming the file, for unsafe or unreadable content, missing keys, a
            task type other than Discrete/Continuous, a discrete task with non-integer
            values, or a frame map that reaches past ``label_array``.
    """
    path = Path(path)
    try:
        data: Any = load_npy_safely(path)
    except UnsafeNpyError as err:
        raise PoseFormatError(str(err)) from err
    if not isinstance(data, dict):
        raise _fail(path, f"expected a dict with keys {list(REQUIRED_KEYS)}, got {type(data).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise _fail(path, f"missing key(s) {', '.join(map(repr, missing))} (has {sorted(map(str, data))})")

    vocabulary, types = data["vocabulary"], data["task_type"]
    if not isinstance(vocabulary, (list, tuple)) or not all(isinstance(v, str) for v in vocabulary):
        raise _fail(path, "'vocabulary' must be a list of task names")
    if len(set(vocabulary)) != len(vocabulary) or not vocabulary:
        raise _fail(path, f"'vocabulary' must list distinct task names, got {list(vocabulary)}")
    if not isinstance(types, (list, tuple, np.ndarray)) or len(types) != len(vocabulary):
        raise _fail(path, f"'task_type' must have one entry per task ({len(vocabulary)})")

    labels = data["label_array"]
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.number) or labels.ndim != 2:
        raise _fail(path, "'label_array' must be a numeric [n_tasks, frames] array, got "
                          f"{getattr(labels, 'shape', type(labels).__name__)}")
    if labels.shape[0] != len(vocabulary):
        raise _fail(path, f"'label_array' has {labels.shape[0]} rows but 'vocabulary' {len(vocabulary)} tasks")
    if not np.issubdtype(labels.dtype, np.floating):  # float files stay as they are (MABe22's is large)
        labels = labels.astype(np.float64)

    frame_map = data["frame_number_map"]
    if not isinstance(frame_map, dict) or not frame_map:
        raise _fail(path, "'frame_number_map' must be a non-empty dict {sequence: (start, end)}")
    spans: dict[str, tuple[int, int]] = {}
    for name, span in frame_map.items():
        ok = (isinstance(span, (tuple, list, np.ndarray)) and len(span) == 2
              and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in span))
        if not ok or not 0 <= int(span[0]) <= int(span[1]):
            raise _fail(path, f"'frame_number_map'[{name!r}] must be (start, end) with 0 <= start <= end, "
                              f"got {span!r}")
        if int(span[1]) > labels.shape[1]:
            raise _fail(path, f"'label_array' has {labels.shape[1]} frames but 'frame_number_map' places "
                              f"sequence {name!r} at frames {int(span[0])}-{int(span[1])}")
        spans[str(name)] = (int(span[0]), int(span[1]))

    sequence_level = data.get("sequence_level_tasks")
    if sequence_level is None:
        sequence_level = [t for t in MABE22_SEQUENCE_TASKS if t in vocabulary]
    elif (not isinstance(sequence_level, (list, tuple))
          or not all(isinstance(t, str) and t in vocabulary for t in sequence_level)):
        raise _fail(path, f"'sequence_level_tasks' must list tasks of 'vocabulary', got {sequence_level!r}")

    tasks = []
    for row, (name, kind) in enumerate(zip(vocabulary, types, strict=True)):
        key = str(kind).lower()
        if key not in ("discrete", "continuous"):
            raise _fail(path, f"task {name!r} has task_type {kind!r} (expected 'Discrete' or 'Continuous')")
        values = labels[row][np.isfinite(labels[row])]
        if key == "discrete" and not np.array_equal(values, np.round(values)):
            raise _fail(path, f"task {name!r} is Discrete but has non-integer labels")
        tasks.append(LabelTask(name, "discrete" if key == "discrete" else "continuous", name in sequence_level, row))
    return TaskLabels(path, tuple(tasks), labels, spans)


def check_overlap(labels: TaskLabels, pose_sequences: list[str] | np.ndarray, pose_source: str) -> list[str]:
    """The sequences of the pose data that the label file labels (sorted).

    Sequences of the frame map that are not in the pose data are ignored with a warning;
    no overlap at all is an error naming both files.
    """
    pose = sorted(set(np.asarray(pose_sequences).astype(str).tolist()))
    shared = [name for name in pose if name in labels.frame_number_map]
    if not shared:
        raise PoseFormatError(
            f"{labels.path}: none of its {len(labels.frame_number_map)} sequences (e.g. "
            f"{sorted(labels.frame_number_map)[:3]}) is in the pose data {pose_source} "
            f"({len(pose)} sequences, e.g. {pose[:3]}); data.pose.labels must label the "
            "sequences of data.pose.path"
        )
    absent = sorted(set(labels.frame_number_map) - set(pose))
    if absent:
        log.warning("%s: %d of its %d sequences are not in the pose data %s and are ignored (e.g. %s)",
                    labels.path, len(absent), len(labels.frame_number_map), pose_source, absent[:3])
    return shared
