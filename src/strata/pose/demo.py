"""Synthetic MABe22-style mouse-triplet tracks whose behaviour labels drive the dynamics.

Every frame carries one label of :data:`BEHAVIOURS`, in segments of 30-120 frames:

* ``rest`` (0): all mice almost still (sub-pixel drift plus keypoint jitter);
* ``explore`` (1): each mouse walks slowly (~2.5 px/frame) with a wandering heading;
* ``chase`` (2): mouse 0 runs (~11 px/frame); the others close in on its path and follow
  it a few frames behind, so speeds rise and inter-agent distances shrink.

A mouse is a rigid-ish body (nose to tail base ~90 px, per-mouse scale 0.9-1.1) placed at
its centre and heading, with a gait swing of the paws, a tail that bends with turning and
~0.7 px jitter. Keypoints go missing (NaN) at ``missing_fraction``, half as single frames
and half as gaps of 2-10 consecutive frames. Everything is drawn from
``np.random.default_rng([seed, stream, sequence])``, so a seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strata.config import ConfigError, DemoPoseConfig
from strata.io.atomic import atomic_path, write_parquet
from strata.pose.keypoints import BEHAVIOUR_TASK, BEHAVIOURS, KEYPOINTS, N_KEYPOINTS
from strata.pose.long_format import to_long_frame
from strata.pose.sequence import PoseSequence

_STREAM = 0x706F7365  # "pose": keeps this generator's draws apart from other demo streams

REST, EXPLORE, CHASE = (BEHAVIOURS.index(b) for b in ("rest", "explore", "chase"))
_SEGMENT_FRAMES = (30, 120)
_SPEED_PX = {EXPLORE: 2.5, CHASE: 11.0}  # mean centre speed per frame
_TURN_SD = {REST: 0.01, EXPLORE: 0.08, CHASE: 0.05}  # heading random-walk step (rad/frame)
_REST_DRIFT_PX = 0.25
_FOLLOW_LAG = 4  # frames between consecutive followers in a chase
_APPROACH_PX = 20.0  # extra speed at which followers close in on the leader's path
_JITTER_PX = 0.7
_MARGIN_PX = 130.0  # keeps whole bodies (tail tip included) inside the arena

# Body-frame offsets (px; +x towards the nose, +y the mouse's left), in KEYPOINTS order.
_BODY = np.array(
    [
        [45.0, 0.0],  # nose
        [30.0, 9.0],  # ear_left
        [30.0, -9.0],  # ear_right
        [22.0, 0.0],  # neck
        [14.0, 13.0],  # forepaw_left
        [14.0, -13.0],  # forepaw_right
        [0.0, 0.0],  # center
        [-24.0, 15.0],  # hindpaw_left
        [-24.0, -15.0],  # hindpaw_right
        [-45.0, 0.0],  # tail_base
        [-75.0, 0.0],  # tail_middle
        [-105.0, 0.0],  # tail_tip
    ]
)
assert _BODY.shape == (N_KEYPOINTS, 2)
_GAIT_SIGN = np.zeros(N_KEYPOINTS)  # diagonal gait: left fore + right hind swing together
_GAIT_SIGN[[KEYPOINTS.index("forepaw_left"), KEYPOINTS.index("hindpaw_right")]] = 1.0
_GAIT_SIGN[[KEYPOINTS.index("forepaw_right"), KEYPOINTS.index("hindpaw_left")]] = -1.0
_TAIL_BEND = np.zeros(N_KEYPOINTS)  # lateral tail offset per unit of turning rate
_TAIL_BEND[[KEYPOINTS.index("tail_middle"), KEYPOINTS.index("tail_tip")]] = (100.0, 250.0)


def _fold(raw: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect coordinates into [lo, hi] (walls as mirrors); also return the +-1 direction flips."""
    width = hi - lo
    phase = np.mod(raw - lo, 2.0 * width)
    back = phase > width
    return lo + np.where(back, 2.0 * width - phase, phase), np.where(back, -1.0, 1.0)


def _segments(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Per-frame labels: segments of random length, each a different behaviour from the last."""
    lengths, behaviours = [], []
    total, current = 0, int(rng.integers(len(BEHAVIOURS)))
    while total < n_frames:
        length = int(rng.integers(_SEGMENT_FRAMES[0], _SEGMENT_FRAMES[1] + 1))
        lengths.append(length)
        behaviours.append(current)
        total += length
        current = (current + int(rng.integers(1, len(BEHAVIOURS)))) % len(BEHAVIOURS)
    return np.repeat(np.asarray(behaviours, np.int64), lengths)[:n_frames]


def _walk(
    rng: np.random.Generator,
    pos: np.ndarray,
    heading: np.ndarray,
    n: int,
    behaviour: int,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Own motion of every agent for ``n`` frames: positions ``[n, A, 2]``, headings ``[n, A]``."""
    a = pos.shape[0]
    theta = heading + np.cumsum(rng.normal(0.0, _TURN_SD[behaviour], (n, a)), axis=0)
    if behaviour == REST:
        raw = pos + np.cumsum(rng.normal(0.0, _REST_DRIFT_PX, (n, a, 2)), axis=0)
        folded, _ = _fold(raw, lo, hi)
        return folded, theta
    speed = _SPEED_PX[behaviour] * rng.lognormal(0.0, 0.15, (n, a))
    step = speed[..., None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    folded, flip = _fold(pos + np.cumsum(step, axis=0), lo, hi)
    # a wall reflection mirrors the direction of travel, so the heading follows it
    return folded, np.arctan2(flip[..., 1] * np.sin(theta), flip[..., 0] * np.cos(theta))


def _follow(
    leader: np.ndarray, start: np.ndarray, heading: np.ndarray, lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """A follower that closes in on the leader's path ``lag`` frames behind it."""
    n = leader.shape[0]
    target = leader[np.clip(np.arange(n) - lag, 0, n - 1)]
    offset0 = start - target[0]
    ramp = max(10.0, float(np.linalg.norm(offset0)) / _APPROACH_PX)
    remaining = np.clip(1.0 - np.arange(1, n + 1) / ramp, 0.0, 1.0)[:, None]
    path = target + remaining * offset0
    step = np.diff(path, axis=0, prepend=start[None])
    moving = np.linalg.norm(step, axis=1) > 0.5
    angle = np.arctan2(step[:, 1], step[:, 0])
    last = np.maximum.accumulate(np.where(moving, np.arange(n), -1))
    return path, np.where(last >= 0, angle[np.maximum(last, 0)], heading)


def _trajectories(
    rng: np.random.Generator, labels: np.ndarray, n_agents: int, arena_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centre positions ``[T, A, 2]`` and headings ``[T, A]``, generated segment by segment."""
    lo, hi = _MARGIN_PX, arena_px - _MARGIN_PX
    pos = rng.uniform(lo, hi, (n_agents, 2))
    heading = rng.uniform(-np.pi, np.pi, n_agents)
    bounds = np.flatnonzero(np.diff(labels)) + 1
    positions, headings = [], []
    for segment in np.split(np.arange(len(labels)), bounds):
        behaviour, n = int(labels[segment[0]]), len(segment)
        seg_pos, seg_head = _walk(rng, pos, heading, n, behaviour, lo, hi)
        if behaviour == CHASE:
            for agent in range(1, n_agents):
                seg_pos[:, agent], seg_head[:, agent] = _follow(
                    seg_pos[:, 0], pos[agent], heading[agent], _FOLLOW_LAG * agent
                )
        positions.append(seg_pos)
        headings.append(seg_head)
        pos, heading = seg_pos[-1], seg_head[-1]
    return np.concatenate(positions), np.concatenate(headings)


def _bodies(rng: np.random.Generator, centres: np.ndarray, headings: np.ndarray) -> np.ndarray:
    """Keypoints ``[T, A, K, 2]`` of bodies placed at ``centres`` facing ``headings``."""
    t, a = headings.shape
    scale = rng.uniform(0.9, 1.1, (1, a, 1, 1))
    speed = np.linalg.norm(np.diff(centres, axis=0, prepend=centres[:1]), axis=-1)  # [T, A]
    turn = np.diff(np.unwrap(headings, axis=0), axis=0, prepend=headings[:1])  # rad/frame
    gait = 5.0 * np.tanh(speed / 3.0) * np.sin(np.cumsum(speed, axis=0) / 12.0)
    local = np.broadcast_to(_BODY, (t, a, N_KEYPOINTS, 2)).copy()
    local[..., 0] += gait[..., None] * _GAIT_SIGN
    local[..., 1] -= np.clip(turn, -0.15, 0.15)[..., None] * _TAIL_BEND
    local *= scale
    cos, sin = np.cos(headings)[..., None], np.sin(headings)[..., None]
    world = np.stack(
        [cos * local[..., 0] - sin * local[..., 1], sin * local[..., 0] + cos * local[..., 1]],
        axis=-1,
    )
    return world + centres[:, :, None, :] + rng.normal(0.0, _JITTER_PX, world.shape)


def _missing_mask(
    rng: np.random.Generator, shape: tuple[int, int, int], fraction: float
) -> np.ndarray:
    """bool ``[T, A, K]`` of missing keypoints: single frames and 2-10 frame gaps."""
    t, a, k = shape
    mean_length = 0.5 * 1 + 0.5 * 6.0
    n_gaps = int(rng.binomial(t * a * k, min(1.0, fraction / mean_length)))
    lengths = np.where(rng.random(n_gaps) < 0.5, 1, rng.integers(2, 11, n_gaps))
    starts = rng.integers(0, t, n_gaps)
    tracks = rng.integers(0, a * k, n_gaps)
    edges = np.zeros((t + 1, a * k), np.int64)
    np.add.at(edges, (starts, tracks), 1)
    np.add.at(edges, (np.minimum(starts + lengths, t), tracks), -1)
    return (np.cumsum(edges, axis=0)[:t] > 0).reshape(t, a, k)


def generate_demo_pose(cfg: DemoPoseConfig, seed: int) -> dict[str, PoseSequence]:
    """The synthetic sequences ``seq0000``, ``seq0001``, ... for ``cfg`` and ``seed``."""
    if cfg.n_keypoints != N_KEYPOINTS:
        raise ConfigError(
            f"demo.pose.n_keypoints: the mouse skeleton has {N_KEYPOINTS} keypoints, "
            f"got {cfg.n_keypoints}"
        )
    for key in ("n_sequences", "n_frames", "n_agents"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"demo.pose.{key}: must be >= 1, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.missing_fraction < 1.0:
        raise ConfigError(
            f"demo.pose.missing_fraction: must be in [0, 1), got {cfg.missing_fraction}"
        )
    if cfg.arena_px <= 4 * _MARGIN_PX:
        raise ConfigError(f"demo.pose.arena_px: must exceed {4 * _MARGIN_PX}, got {cfg.arena_px}")

    out = {}
    for i in range(cfg.n_sequences):
        rng = np.random.default_rng([seed, _STREAM, i])
        labels = _segments(rng, cfg.n_frames)
        centres, headings = _trajectories(rng, labels, cfg.n_agents, cfg.arena_px)
        keypoints = _bodies(rng, centres, headings).astype(np.float32)
        keypoints[_missing_mask(rng, keypoints.shape[:3], cfg.missing_fraction)] = np.nan
        out[f"seq{i:04d}"] = PoseSequence(keypoints, labels)
    return out


def to_mabe_dict(sequences: dict[str, PoseSequence]) -> dict:
    """The MABe22 layout: ``{"vocabulary": ["behaviour"], "sequences": {name: {...}}}``."""
    return {
        "vocabulary": [BEHAVIOUR_TASK],
        "sequences": {
            name: {
                "keypoints": seq.keypoints,
                "annotations": (
                    seq.labels if seq.labels is not None else np.full(seq.n_frames, -1, np.int64)
                )[None, :],
            }
            for name, seq in sequences.items()
        },
    }


def write_demo_pose(cfg: DemoPoseConfig, seed: int, npy_path: Path, parquet_path: Path) -> None:
    """Write the demo as a MABe22 ``.npy`` dict and as the long parquet table (atomically)."""
    sequences = generate_demo_pose(cfg, seed)
    with atomic_path(npy_path) as tmp, open(tmp, "wb") as fh:
        # our own freshly built dict: pickling it is how the real MABe22 file is made
        np.save(fh, to_mabe_dict(sequences), allow_pickle=True)
    write_parquet(to_long_frame(sequences), parquet_path)
