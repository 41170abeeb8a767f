"""Read pose tracks from a MABe22 ``.npy`` dict or a long ``.parquet``/``.csv`` table.

The ``.npy`` route never calls ``np.load(allow_pickle=True)``: it goes through
:func:`strata.io.safe_npy.load_npy_safely`, then checks the MABe22 structure
``{"vocabulary": [...], "sequences": {name: {"keypoints": [T, A, 12, 2],
"annotations": [n_tasks, T]}}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from strata.io.safe_npy import UnsafeNpyError, load_npy_safely
from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import BEHAVIOUR_TASK, N_KEYPOINTS, UNKNOWN_LABEL
from strata.pose.long_format import from_long_frame
from strata.pose.sequence import PoseSequence


def read_pose_file(path: str | Path, label_task: str = BEHAVIOUR_TASK) -> dict[str, PoseSequence]:
    """Read every sequence of a pose file, keyed by sequence name.

    Args:
        path: ``.npy`` (MABe22 pickled dict), ``.parquet`` or ``.csv`` (long format, see
            :mod:`strata.pose.long_format`).
        label_task: the ``vocabulary`` entry whose ``annotations`` row gives the per-frame
            labels of a ``.npy`` file (labels are None if it is absent).

    Raises:
        PoseFormatError: naming the file (and sequence) for unsafe, malformed or
            wrongly shaped content.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data = load_npy_safely(path)
        except UnsafeNpyError as err:
            raise PoseFormatError(str(err)) from err
        return _from_mabe_dict(data, str(path), label_task)
    if suffix in (".parquet", ".csv"):
        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, dtype={"sequence": str, "keypoint": str})
        except Exception as err:  # pyarrow/pandas raise many types for unreadable files
            raise PoseFormatError(f"{path}: cannot read pose table: {err}") from err
        return from_long_frame(frame, str(path))
    raise PoseFormatError(
        f"{path}: unsupported pose file type {suffix!r} (use .npy, .parquet or .csv)"
    )


def _from_mabe_dict(data: Any, source: str, label_task: str) -> dict[str, PoseSequence]:
    """Check the MABe22 dict layout and convert each sequence."""
    if not isinstance(data, dict) or not isinstance(data.get("sequences"), dict):
        raise PoseFormatError(f"{source}: expected a dict with a 'sequences' dict (MABe22 layout)")
    vocabulary = data.get("vocabulary", [])
    if not isinstance(vocabulary, (list, tuple)) or not all(isinstance(v, str) for v in vocabulary):
        raise PoseFormatError(f"{source}: 'vocabulary' must be a list of strings")
    task = list(vocabulary).index(label_task) if label_task in vocabulary else None
    if not data["sequences"]:
        raise PoseFormatError(f"{source}: 'sequences' is empty")

    out: dict[str, PoseSequence] = {}
    for name, entry in data["sequences"].items():
        where = f"{source}, sequence {name!r}"
        if not isinstance(entry, dict) or "keypoints" not in entry:
            raise PoseFormatError(f"{where}: expected a dict with 'keypoints'")
        kp = entry["keypoints"]
        if not isinstance(kp, np.ndarray) or not np.issubdtype(kp.dtype, np.number) or np.iscomplexobj(kp):
            raise PoseFormatError(f"{where}: 'keypoints' must be a real numeric array, got "
                                  f"{kp.dtype if isinstance(kp, np.ndarray) else type(kp).__name__}")
        if kp.ndim != 4 or kp.shape[2:] != (N_KEYPOINTS, 2) or kp.shape[0] < 1 or kp.shape[1] < 1:
            raise PoseFormatError(
                f"{where}: 'keypoints' has shape {list(kp.shape)}; "
                f"expected [T, agents, {N_KEYPOINTS}, 2]"
            )
        labels = None
        if task is not None and "annotations" in entry:
            labels = _labels_from_annotations(
                entry["annotations"], task, len(vocabulary), kp.shape[0], where
            )
        out[str(name)] = PoseSequence(kp.astype(np.float32), labels)
    return out


def _labels_from_annotations(
    ann: Any, task: int, n_tasks: int, n_frames: int, where: str
) -> np.ndarray:
    """Row ``task`` of an ``[n_tasks, T]`` annotation array as int64 (non-finite -> -1)."""
    ann = np.asarray(ann)
    if not np.issubdtype(ann.dtype, np.number) or ann.shape != (n_tasks, n_frames):
        raise PoseFormatError(
            f"{where}: 'annotations' has shape {list(ann.shape)} ({ann.dtype}); "
            f"expected numeric [{n_tasks}, {n_frames}]"
        )
    row = ann[task].astype(np.float64)
    return np.where(np.isfinite(row), row, UNKNOWN_LABEL).astype(np.int64)
