"""The plain long table format of pose tracks (one row per sequence/frame/agent/keypoint).

Columns: ``sequence`` (str), ``frame`` (int, 0-based), ``agent`` (int or str; sorted
unique values become agent indices 0..A-1 for the whole file), ``keypoint`` (a name from
:data:`strata.pose.keypoints.KEYPOINTS`), ``x``, ``y`` (float pixels, NaN if missing) and
the optional ``behaviour`` (int per-frame label, -1 or empty if unknown). Rows that are
absent read as missing keypoints.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import KEYPOINT_INDEX, KEYPOINTS, N_KEYPOINTS, UNKNOWN_LABEL
from strata.pose.sequence import PoseSequence

LONG_COLUMNS: tuple[str, ...] = ("sequence", "frame", "agent", "keypoint", "x", "y", "behaviour")
_REQUIRED = LONG_COLUMNS[:-1]
# A sequence's frames 0..max must be at least this sparse (rows of 1 frame in N), so memory
# stays proportional to the table, not to the largest frame number in it.
MAX_FRAME_SPAN = 4


def to_long_frame(sequences: Mapping[str, PoseSequence]) -> pd.DataFrame:
    """Flatten sequences (in the mapping's order) into the long table, one row per entry."""
    parts = []
    for name, seq in sequences.items():
        t, a, k, _ = seq.keypoints.shape
        labels = seq.labels if seq.labels is not None else np.full(t, UNKNOWN_LABEL, np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "sequence": np.full(t * a * k, name, dtype=object),
                    "frame": np.repeat(np.arange(t, dtype=np.int64), a * k),
                    "agent": np.tile(np.repeat(np.arange(a, dtype=np.int64), k), t),
                    "keypoint": np.tile(np.asarray(KEYPOINTS, dtype=object), t * a),
                    "x": seq.keypoints[..., 0].reshape(-1),
                    "y": seq.keypoints[..., 1].reshape(-1),
                    "behaviour": np.repeat(labels.astype(np.int64), a * k),
                }
            )
        )
    if not parts:
        raise ValueError("no sequences to write")
    return pd.concat(parts, ignore_index=True)


def from_long_frame(frame: pd.DataFrame, source: str) -> dict[str, PoseSequence]:
    """Pivot the long table back into ``{sequence: PoseSequence}`` (absent rows are NaN).

    Raises:
        PoseFormatError: naming ``source`` for missing columns, unknown keypoint names,
            negative or non-integer frames, duplicate rows, or inconsistent frame labels.
    """
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise PoseFormatError(
            f"{source}: missing column(s) {missing}; expected {list(LONG_COLUMNS)}"
        )
    if frame.empty:
        raise PoseFormatError(f"{source}: the pose table has no rows")

    kp_names = frame["keypoint"].astype(str).to_numpy()
    unknown = sorted(set(np.unique(kp_names)) - set(KEYPOINTS))
    if unknown:
        raise PoseFormatError(
            f"{source}: unknown keypoint name(s) {unknown}; expected {list(KEYPOINTS)}"
        )
    kp_idx = pd.Series(kp_names).map(KEYPOINT_INDEX).to_numpy(np.int64)

    frames_f = pd.to_numeric(frame["frame"], errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(frames_f)) or np.any(frames_f < 0) or np.any(frames_f % 1 != 0):
        raise PoseFormatError(f"{source}: column 'frame' must hold non-negative integers")
    frames = frames_f.astype(np.int64)

    agent_codes, _ = pd.factorize(frame["agent"], sort=True)
    if np.any(agent_codes < 0):
        raise PoseFormatError(f"{source}: column 'agent' has empty values")
    n_agents = int(agent_codes.max()) + 1

    try:
        xy = frame[["x", "y"]].to_numpy(np.float64)
    except (TypeError, ValueError) as err:
        raise PoseFormatError(f"{source}: columns 'x'/'y' are not numeric: {err}") from err
    labels_col = None
    if "behaviour" in frame.columns:
        labels_col = pd.to_numeric(frame["behaviour"], errors="coerce").to_numpy(np.float64)
        labels_col = np.where(np.isfinite(labels_col), labels_col, UNKNOWN_LABEL).astype(np.int64)

    names = frame["sequence"].astype(str).to_numpy()
    out: dict[str, PoseSequence] = {}
    for name, rows in pd.Series(names).groupby(names, sort=True).indices.items():
        t = int(frames[rows].max()) + 1
        present = len(np.unique(frames[rows]))
        if t > MAX_FRAME_SPAN * present:  # a forged frame number would allocate T x agents x keypoints
            raise PoseFormatError(
                f"{source}, sequence {name!r}: frames run to {t - 1} but only {present} distinct frames have "
                f"rows; at least 1 in {MAX_FRAME_SPAN} frames of a sequence must have a row"
            )
        flat = (frames[rows] * n_agents + agent_codes[rows]) * N_KEYPOINTS + kp_idx[rows]
        if len(np.unique(flat)) != len(flat):
            raise PoseFormatError(
                f"{source}, sequence {name!r}: duplicate (frame, agent, keypoint) rows"
            )
        keypoints = np.full((t * n_agents * N_KEYPOINTS, 2), np.nan, np.float32)
        keypoints[flat] = xy[rows]
        labels = None
        if labels_col is not None:
            labels = np.full(t, UNKNOWN_LABEL, np.int64)
            labels[frames[rows]] = labels_col[rows]
            if np.any(labels[frames[rows]] != labels_col[rows]):
                raise PoseFormatError(
                    f"{source}, sequence {name!r}: rows of one frame carry "
                    "different 'behaviour' values"
                )
        out[str(name)] = PoseSequence(keypoints.reshape(t, n_agents, N_KEYPOINTS, 2), labels)
    return out
