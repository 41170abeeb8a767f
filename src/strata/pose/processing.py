"""Turn one pose sequence into model-ready windows (docs/design.md §2.3, §3.6).

Steps, in order, all vectorised over frames:

1. :func:`interpolate_missing` fills NaN keypoints by linear interpolation over time per
   agent/keypoint (nearest observed value at the edges) and returns the observation mask;
2. :func:`normalise` maps pixels to [-1, 1] around the arena centre (``center: arena``);
3. :func:`egocentric` (optional) moves each agent into its own body frame;
4. :func:`flatten_features` orders features as (agent, keypoint, xy): F = A * K * 2;
5. :func:`cut_windows` cuts ``window`` frames every ``stride`` frames.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import KEYPOINT_INDEX, UNKNOWN_LABEL


def observed_mask(keypoints: np.ndarray) -> np.ndarray:
    """bool ``[T, A, K]``: True where both coordinates of a keypoint are finite."""
    return np.isfinite(keypoints).all(axis=-1)


def check_agents_observed(observed: np.ndarray, where: str) -> None:
    """Raise if an agent has no observed keypoint in the whole sequence (nothing to fill from)."""
    empty = np.flatnonzero(~observed.any(axis=(0, 2)))
    if empty.size:
        raise PoseFormatError(
            f"{where}: agent {int(empty[0])} has no observed keypoint in any frame "
            f"(all NaN; agents without data: {empty.tolist()})"
        )


def interpolate_missing(keypoints: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN keypoints by linear interpolation over time.

    Each (agent, keypoint) track is interpolated between its nearest observed frames;
    before the first / after the last observation the nearest observed value is held. A
    keypoint never observed in the sequence takes its agent's per-frame mean of the other
    keypoints (still marked unobserved).

    Args:
        keypoints: ``[T, A, K, 2]`` with NaN where missing.
        where: "file, sequence" text for error messages.

    Returns:
        ``(filled float32 [T, A, K, 2], observed bool [T, A, K])``.

    Raises:
        PoseFormatError: if an agent is all NaN for the whole sequence.
    """
    observed = observed_mask(keypoints)
    check_agents_observed(observed, where)
    t, a, k, _ = keypoints.shape
    flat = keypoints.reshape(t, a * k, 2).astype(np.float64)
    valid = observed.reshape(t, a * k)

    frames = np.arange(t)[:, None]
    prev = np.maximum.accumulate(np.where(valid, frames, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(valid, frames, t)[::-1], axis=0)[::-1]
    lo = np.where(prev >= 0, prev, nxt)  # edges: hold the nearest observed frame
    hi = np.where(nxt < t, nxt, prev)
    lo_c, hi_c = np.clip(lo, 0, t - 1), np.clip(hi, 0, t - 1)
    cols = np.arange(a * k)[None, :]
    v_lo, v_hi = flat[lo_c, cols], flat[hi_c, cols]
    span = hi_c - lo_c
    frac = np.divide(frames - lo_c, span, out=np.zeros(span.shape), where=span > 0)
    filled = np.where(valid[..., None], flat, v_lo + (v_hi - v_lo) * frac[..., None])

    filled = filled.reshape(t, a, k, 2)
    never = ~observed.any(axis=0)  # [A, K] keypoints with no observation at all
    if never.any():
        ever = ~never
        agent_mean = (
            np.where(ever[None, :, :, None], filled, 0.0).sum(axis=2)
            / ever.sum(axis=1)[None, :, None]
        )  # [T, A, 2]
        filled = np.where(never[None, :, :, None], agent_mean[:, :, None, :], filled)
    return filled.astype(np.float32), observed


def normalise(
    keypoints: np.ndarray, center: Literal["arena", "none"], arena_px: float
) -> np.ndarray:
    """``arena``: (xy - arena_px / 2) / (arena_px / 2), arena -> [-1, 1]; ``none``: pixels."""
    if center == "none":
        return keypoints
    half = np.float32(arena_px / 2.0)
    return ((keypoints - half) / half).astype(np.float32)


def egocentric(keypoints: np.ndarray) -> np.ndarray:
    """Move every agent into its own body frame, frame by frame.

    Each agent is translated so its ``center`` keypoint is the origin, then rotated so
    the vector tail_base -> neck points along +x (the nose side is +x, the mouse's left is
    +y). The absolute position and heading are dropped; inter-agent geometry is lost too.
    A degenerate body (neck == tail_base) is left unrotated.
    """
    kp = keypoints.astype(np.float64)
    origin = kp[:, :, KEYPOINT_INDEX["center"], :]
    axis = kp[:, :, KEYPOINT_INDEX["neck"], :] - kp[:, :, KEYPOINT_INDEX["tail_base"], :]
    angle = np.arctan2(axis[..., 1], axis[..., 0])  # [T, A]
    cos, sin = np.cos(angle)[..., None], np.sin(angle)[..., None]
    rel = kp - origin[:, :, None, :]
    x, y = rel[..., 0], rel[..., 1]
    return np.stack([cos * x + sin * y, -sin * x + cos * y], axis=-1).astype(np.float32)


def flatten_features(keypoints: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T, A, K, 2]`` -> float32 ``[T, F]`` in (agent, keypoint, xy) order + uint8 mask."""
    t = keypoints.shape[0]
    features = np.ascontiguousarray(keypoints, dtype=np.float32).reshape(t, -1)
    valid = np.repeat(observed, 2, axis=-1).reshape(t, -1).astype(np.uint8)
    return features, valid


def window_starts(n_frames: int, window: int, stride: int) -> np.ndarray:
    """Start frames of all full windows: floor((T - window) / stride) + 1 of them."""
    if n_frames < window:
        return np.zeros(0, np.int64)
    return np.arange(0, n_frames - window + 1, stride, dtype=np.int64)


def cut_windows(per_frame: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """``[T, ...]`` -> ``[N, window, ...]`` copies of the windows starting at ``starts``."""
    views = sliding_window_view(per_frame, window, axis=0)  # [T - window + 1, ..., window]
    return np.ascontiguousarray(np.moveaxis(views[starts], -1, 1))


def window_valid_fraction(valid: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Fraction of observed entries per window, from a ``[T, F]`` mask via a cumulative sum."""
    per_frame = valid.reshape(valid.shape[0], -1).sum(axis=1, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(per_frame)])
    total = window * valid[0].size
    return (cum[starts + window] - cum[starts]) / total


def majority_labels(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Most frequent known label per row of ``[N, T]`` (ties -> smaller label; -1 if none)."""
    if labels.size == 0:
        return np.zeros(labels.shape[0], np.int64)
    n = int(labels.max()) + 1 if n_classes is None else n_classes
    if n <= 0:
        return np.full(labels.shape[0], UNKNOWN_LABEL, np.int64)
    counts = (labels[..., None] == np.arange(n)).sum(axis=1)  # [N, n]
    best = counts.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, best, UNKNOWN_LABEL).astype(np.int64)


def prepare_sequence(
    keypoints: np.ndarray,
    center: Literal["arena", "none"],
    arena_px: float,
    use_egocentric: bool,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 for one sequence: float32 features ``[T, F]``, uint8 observed mask ``[T, F]``."""
    filled, observed = interpolate_missing(keypoints, where)
    coords = normalise(filled, center, arena_px)
    if use_egocentric:
        coords = egocentric(coords)
    return flatten_features(coords, observed)
