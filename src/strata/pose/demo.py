"""Synthetic MABe22-style mouse-triplet tracks with labels at three time scales that drive
the dynamics (so that each label is decodable from the keypoints, at its own time scale).

Labels are drawn first, the motion follows from them:

* per sequence (:data:`SEQUENCE_TASKS`, balanced over a seed's sequences):

  - ``strain`` 0 / 1: strain-1 mice are 4 % larger (per-mouse spread +-2 %) and step at a
    higher cadence (stride 20 px instead of 26 px). Every body's size also fluctuates by
    ~8 % over ~10 frames (stretching), so single frames show the strain only faintly and
    long windows clearly;
  - ``lights`` 0 = off / 1 = on: with the lights off the mice are active (mostly explore and
    chase segments, 20 % faster), with the lights on they rest and huddle (20 % slower).

* per segment of 30-120 frames, the triplet's action, one of :data:`BEHAVIOURS` (the
  ``behaviour`` annotations of the track file and the ``action`` task of the label file):

  - ``rest``: all mice almost still (sub-pixel drift);
  - ``explore``: each mouse walks (~2.5 px/frame) with a turning heading;
  - ``chase``: mouse 0 runs (~11 px/frame); the others close in on its path and follow it a
    few frames behind;
  - ``huddle``: the mice walk to a tight ring around their centroid, then lie still, curled
    (body 20 % shorter, tail bent);
  - ``groom``: the mice sit still with their forepaws raised to the nose, oscillating every
    4 frames, the nose bobbing with them.

* per frame, of mouse 0 while it walks (centre speed >= 1 px/frame; NaN = unlabelled
  otherwise):

  - ``turning`` 0 / 1 / 2 = right / straight / left: the change of its true heading below
    -0.035, within +-0.035 or above +0.035 rad/frame (angles counter-clockwise in the
    arena's x-y plane). Walking mice follow a turning state (right / straight / left at
    0.07 rad/frame) that switches every ~6 frames; the tail bends with the turn;
  - ``gait_phase`` 0-3: the quarter of its diagonal gait cycle (left fore + right hind paw
    forward in the first half), 5-14 frames per cycle.

A mouse is a rigid-ish body (nose to tail base ~90 px, scaled by strain, mouse and
stretching) placed at its centre and heading, with the gait swing of the paws, a tail that
bends with turning and ~0.7 px jitter. Keypoints go missing (NaN) at ``missing_fraction``,
half as single frames and half as gaps of 2-10 consecutive frames. Everything is drawn from
``np.random.default_rng([seed, stream, ...])``, so a seed gives the same bytes.
:func:`write_demo_pose` writes the tracks (MABe22 ``.npy`` and long parquet) and, given a
path, the labels in MABe22's test-label format (:mod:`strata.pose.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from strata.config import ConfigError, DemoPoseConfig
from strata.io.atomic import atomic_path, write_parquet
from strata.pose.keypoints import BEHAVIOUR_TASK, BEHAVIOURS, KEYPOINTS, N_KEYPOINTS
from strata.pose.long_format import to_long_frame
from strata.pose.sequence import PoseSequence

_STREAM = 0x706F7365  # "pose": keeps this generator's draws apart from other demo streams
_DESIGN_STREAM = 0x64736E  # "dsn": the per-sequence strain / lights assignment

REST, EXPLORE, CHASE, HUDDLE, GROOM = (
    BEHAVIOURS.index(b) for b in ("rest", "explore", "chase", "huddle", "groom")
)
#: label-file tasks: name -> number of classes (all Discrete)
FRAME_TASKS: dict[str, int] = {"action": len(BEHAVIOURS), "turning": 3, "gait_phase": 4}
SEQUENCE_TASKS: dict[str, int] = {"strain": 2, "lights": 2}
TURNS: tuple[str, ...] = ("right", "straight", "left")

_SEGMENT_FRAMES = (30, 120)
_SPEED_PX = {EXPLORE: 2.5, CHASE: 11.0}  # mean centre speed per frame (before lights)
_TURN_RATE = 0.07  # rad/frame of a turning state
_TURN_NOISE = 0.015  # rad/frame added to a walking heading
_TURN_SWITCH = 1.0 / 6.0  # chance per frame that the turning state changes
_TURN_THRESHOLD = 0.035  # rad/frame: the ``turning`` label's left / right threshold
_STILL_TURN_SD = 0.005  # rad/frame heading drift of a still mouse
_MOVING_PX = 1.0  # centre speed from which mouse 0's frame labels are defined
_REST_DRIFT_PX = 0.25
_FOLLOW_LAG = 4  # frames between consecutive followers in a chase
_APPROACH_PX = 20.0  # extra speed at which followers close in on the leader's path
_HUDDLE_RADIUS_PX = 30.0  # huddled centres sit on a ring of this radius
_HUDDLE_SPEED_PX = 4.0
_HUDDLE_SHRINK = 0.2  # a curled body is this much shorter
_GROOM_PERIOD = 4.0  # frames per paw stroke
_GROOM_REACH_PX = 12.0  # forepaws forward while grooming
_GROOM_STROKE_PX = 4.0
_GROOM_NOD_PX = 2.0
_STRAIN_SCALE = (1.0, 1.04)
_SCALE_SPREAD = 0.02  # per-mouse body scale: the strain's times uniform(1 -+ this)
_STRETCH_SD = 0.08  # relative body-size fluctuation per frame (stretching, breathing)
_STRETCH_WIDTH = 0.6  # the width follows the length fluctuation this much
_STRETCH_MEMORY = 0.9  # its AR(1) coefficient per frame (~10 frames)
_STRAIN_STRIDE_PX = (26.0, 20.0)  # body travel per gait cycle
_MAX_CADENCE = 0.2  # gait cycles per frame at full run
_LIGHTS_SPEED = (1.2, 0.8)  # off, on
_LIGHTS_WEIGHTS = (  # chance of each action (BEHAVIOURS order) for the next segment
    (0.05, 0.40, 0.35, 0.05, 0.15),  # lights off: active
    (0.35, 0.15, 0.05, 0.30, 0.15),  # lights on
)
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
_K = {name: i for i, name in enumerate(KEYPOINTS)}
_FOREPAWS = [_K["forepaw_left"], _K["forepaw_right"]]
_GAIT_SIGN = np.zeros(N_KEYPOINTS)  # diagonal gait: left fore + right hind swing together
_GAIT_SIGN[[_K["forepaw_left"], _K["hindpaw_right"]]] = 1.0
_GAIT_SIGN[[_K["forepaw_right"], _K["hindpaw_left"]]] = -1.0
_TAIL_BEND = np.zeros(N_KEYPOINTS)  # lateral tail offset per unit of turning rate
_TAIL_BEND[[_K["tail_middle"], _K["tail_tip"]]] = (100.0, 250.0)
_TAIL_CURL = np.zeros(N_KEYPOINTS)  # lateral tail offset of a curled (huddled) mouse
_TAIL_CURL[[_K["tail_middle"], _K["tail_tip"]]] = (20.0, 45.0)


@dataclass(frozen=True)
class DemoPose:
    """The demo of one config and seed.

    Attributes:
        sequences: ``seq0000``, ``seq0001``, ... -> tracks with the per-frame action labels.
        labels: sequence -> task (:data:`FRAME_TASKS`, :data:`SEQUENCE_TASKS`) -> float
            ``[T]`` class per frame, NaN where unlabelled.
    """

    sequences: dict[str, PoseSequence]
    labels: dict[str, dict[str, np.ndarray]]


def _fold(raw: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect coordinates into [lo, hi] (walls as mirrors); also return the +-1 direction flips."""
    width = hi - lo
    phase = np.mod(raw - lo, 2.0 * width)
    back = phase > width
    return lo + np.where(back, 2.0 * width - phase, phase), np.where(back, -1.0, 1.0)


def sequence_design(n_sequences: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(strain, lights) int ``[S]`` of each sequence: every block of four consecutive
    sequences holds the four combinations in a random order, so each class of both is in
    about half the sequences, the two are independent, and a sequence's draw does not depend
    on ``n_sequences``."""
    blocks = -(-n_sequences // 4)
    combos = np.concatenate(
        [np.random.default_rng([seed, _DESIGN_STREAM, b]).permutation(4) for b in range(blocks)]
    )[:n_sequences]
    return combos % 2, combos // 2


def _segments(rng: np.random.Generator, n_frames: int, weights: tuple[float, ...]) -> np.ndarray:
    """Per-frame actions: segments of random length, each a different action from the last,
    drawn with ``weights``."""
    lengths, actions = [], []
    total, current = 0, -1
    while total < n_frames:
        w = np.asarray(weights, dtype=np.float64)
        if current >= 0:
            w[current] = 0.0
        current = int(rng.choice(len(w), p=w / w.sum()))
        length = int(rng.integers(_SEGMENT_FRAMES[0], _SEGMENT_FRAMES[1] + 1))
        lengths.append(length)
        actions.append(current)
        total += length
    return np.repeat(np.asarray(actions, np.int64), lengths)[:n_frames]


def _turn_states(rng: np.random.Generator, n: int, a: int) -> np.ndarray:
    """Turning state ``[n, a]`` in {-1, 0, 1} (right, straight, left), a Markov chain that
    moves to another state with chance :data:`_TURN_SWITCH` per frame."""
    shift = np.where(rng.random((n, a)) < _TURN_SWITCH, rng.integers(1, 3, (n, a)), 0)
    return (rng.integers(0, 3, a) + np.cumsum(shift, axis=0)) % 3 - 1


def _walk(
    rng: np.random.Generator,
    pos: np.ndarray,
    heading: np.ndarray,
    turns: np.ndarray,
    action: int,
    speed_factor: float,
    lo: float,
    hi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Own motion of every agent over ``turns`` (``[n, A]``): positions ``[n, A, 2]``,
    headings ``[n, A]``. Walking actions follow the turning states; others barely drift."""
    n, a = turns.shape
    if action not in _SPEED_PX:
        theta = heading + np.cumsum(rng.normal(0.0, _STILL_TURN_SD, (n, a)), axis=0)
        raw = pos + np.cumsum(rng.normal(0.0, _REST_DRIFT_PX, (n, a, 2)), axis=0)
        return _fold(raw, lo, hi)[0], theta
    rate = _TURN_RATE * turns + rng.normal(0.0, _TURN_NOISE, (n, a))
    theta = heading + np.cumsum(rate, axis=0)
    speed = speed_factor * _SPEED_PX[action] * rng.lognormal(0.0, 0.15, (n, a))
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


def _huddle(
    rng: np.random.Generator, pos: np.ndarray, heading: np.ndarray, n: int, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mice walking to a ring around their centroid, then still: positions ``[n, A, 2]``,
    headings ``[n, A]`` and how far each has arrived (0-1, ``[n, A]``: the curl)."""
    a = pos.shape[0]
    angles = rng.uniform(-np.pi, np.pi) + 2.0 * np.pi * np.arange(a) / a
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * _HUDDLE_RADIUS_PX
    offset = np.clip(pos.mean(axis=0) + ring, lo, hi) - pos
    distance = np.linalg.norm(offset, axis=-1)
    ramp = np.maximum(10.0, distance / _HUDDLE_SPEED_PX)
    arrived = np.clip(np.arange(1, n + 1)[:, None] / ramp, 0.0, 1.0)
    drift = np.cumsum(rng.normal(0.0, 0.5 * _REST_DRIFT_PX, (n, a, 2)), axis=0)
    path = _fold(pos + arrived[..., None] * offset + drift, lo, hi)[0]
    toward = np.where(distance > 1.0, np.arctan2(offset[:, 1], offset[:, 0]), heading)
    return path, np.broadcast_to(toward, (n, a)).copy(), arrived


def _trajectories(
    rng: np.random.Generator,
    actions: np.ndarray,
    n_agents: int,
    arena_px: float,
    speed_factor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``[T, A, 2]``, headings ``[T, A]`` and curl ``[T, A]``, segment by segment."""
    lo, hi = _MARGIN_PX, arena_px - _MARGIN_PX
    pos = rng.uniform(lo, hi, (n_agents, 2))
    heading = rng.uniform(-np.pi, np.pi, n_agents)
    turns = _turn_states(rng, len(actions), n_agents)
    curl = np.zeros((len(actions), n_agents))
    bounds = np.flatnonzero(np.diff(actions)) + 1
    positions, headings = [], []
    for segment in np.split(np.arange(len(actions)), bounds):
        action, n = int(actions[segment[0]]), len(segment)
        if action == HUDDLE:
            seg_pos, seg_head, curl[segment] = _huddle(rng, pos, heading, n, lo, hi)
        else:
            seg_pos, seg_head = _walk(
                rng, pos, heading, turns[segment], action, speed_factor, lo, hi
            )
        if action == CHASE:
            for agent in range(1, n_agents):
                seg_pos[:, agent], seg_head[:, agent] = _follow(
                    seg_pos[:, 0], pos[agent], heading[agent], _FOLLOW_LAG * agent
                )
        positions.append(seg_pos)
        headings.append(seg_head)
        pos, heading = seg_pos[-1], seg_head[-1]
    return np.concatenate(positions), np.concatenate(headings), curl


def _speed_and_turn(centres: np.ndarray, headings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre speed (px/frame) and heading change (rad/frame), both ``[T, A]``, 0 at frame 0."""
    speed = np.linalg.norm(np.diff(centres, axis=0, prepend=centres[:1]), axis=-1)
    turn = np.diff(np.unwrap(headings, axis=0), axis=0, prepend=headings[:1])
    return speed, turn


def _bodies(
    rng: np.random.Generator,
    centres: np.ndarray,
    headings: np.ndarray,
    actions: np.ndarray,
    curl: np.ndarray,
    strain: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``[T, A, K, 2]`` of bodies placed at ``centres`` facing ``headings``, and the
    gait phase ``[T, A]`` (rad, in [0, 2 pi))."""
    t, a = headings.shape
    scale = _STRAIN_SCALE[strain] * rng.uniform(1 - _SCALE_SPREAD, 1 + _SCALE_SPREAD, (1, a, 1, 1))
    innovation = np.sqrt(1.0 - _STRETCH_MEMORY**2) * rng.normal(0.0, _STRETCH_SD, (t, a))
    stretch = lfilter([1.0], [1.0, -_STRETCH_MEMORY], innovation, axis=0)
    speed, turn = _speed_and_turn(centres, headings)
    stride = _STRAIN_STRIDE_PX[strain]
    cadence = _MAX_CADENCE * np.tanh(speed / (stride * _MAX_CADENCE))  # cycles per frame
    phase = np.mod(2.0 * np.pi * np.cumsum(cadence, axis=0) + rng.uniform(0, 2 * np.pi, a), 2 * np.pi)
    gait = 5.0 * np.tanh(speed / 3.0) * np.sin(phase)
    local = np.broadcast_to(_BODY, (t, a, N_KEYPOINTS, 2)).copy()
    local[..., 0] += gait[..., None] * _GAIT_SIGN
    local[..., 1] -= np.clip(turn, -0.15, 0.15)[..., None] * _TAIL_BEND
    # grooming: forepaws raised to the nose and stroking, the nose nodding with them
    groom = (actions == GROOM)[:, None]
    stroke = np.sin(2.0 * np.pi * np.arange(t)[:, None] / _GROOM_PERIOD + rng.uniform(0, 6.3, a))
    stroke = np.where(groom, stroke, 0.0)
    local[:, :, _FOREPAWS, 0] += (groom * _GROOM_REACH_PX + _GROOM_STROKE_PX * stroke)[..., None]
    local[:, :, _FOREPAWS, 1] *= np.where(groom, 0.5, 1.0)[..., None]
    local[:, :, _K["nose"], 0] += _GROOM_NOD_PX * stroke
    # huddling: a curled body, shorter with a bent tail
    local[..., 0] *= (1.0 + stretch - _HUDDLE_SHRINK * curl)[..., None]
    local[..., 1] *= (1.0 + _STRETCH_WIDTH * stretch)[..., None]
    local[..., 1] += curl[..., None] * _TAIL_CURL
    local *= scale
    cos, sin = np.cos(headings)[..., None], np.sin(headings)[..., None]
    world = np.stack(
        [cos * local[..., 0] - sin * local[..., 1], sin * local[..., 0] + cos * local[..., 1]],
        axis=-1,
    )
    return world + centres[:, :, None, :] + rng.normal(0.0, _JITTER_PX, world.shape), phase


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


def _frame_labels(
    centres: np.ndarray, headings: np.ndarray, phase: np.ndarray
) -> dict[str, np.ndarray]:
    """``turning`` and ``gait_phase`` of mouse 0 per frame, NaN where it does not walk."""
    speed, turn = _speed_and_turn(centres[:, :1], headings[:, :1])
    walking = speed[:, 0] >= _MOVING_PX
    turning = 1.0 + (turn[:, 0] > _TURN_THRESHOLD) - (turn[:, 0] < -_TURN_THRESHOLD)
    gait = np.floor(phase[:, 0] / (np.pi / 2.0)).clip(0, 3)
    return {
        "turning": np.where(walking, turning, np.nan),
        "gait_phase": np.where(walking, gait, np.nan),
    }


def _check(cfg: DemoPoseConfig) -> None:
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


def generate_demo(cfg: DemoPoseConfig, seed: int) -> DemoPose:
    """The synthetic sequences ``seq0000``, ``seq0001``, ... and their labels for ``cfg``
    and ``seed``."""
    _check(cfg)
    strains, lights = sequence_design(cfg.n_sequences, seed)
    sequences, labels = {}, {}
    for i in range(cfg.n_sequences):
        rng = np.random.default_rng([seed, _STREAM, i])
        strain, light = int(strains[i]), int(lights[i])
        actions = _segments(rng, cfg.n_frames, _LIGHTS_WEIGHTS[light])
        centres, headings, curl = _trajectories(
            rng, actions, cfg.n_agents, cfg.arena_px, _LIGHTS_SPEED[light]
        )
        keypoints, phase = _bodies(rng, centres, headings, actions, curl, strain)
        keypoints = keypoints.astype(np.float32)
        keypoints[_missing_mask(rng, keypoints.shape[:3], cfg.missing_fraction)] = np.nan
        name = f"seq{i:04d}"
        sequences[name] = PoseSequence(keypoints, actions)
        labels[name] = {
            "action": actions.astype(np.float64),
            **_frame_labels(centres, headings, phase),
            "strain": np.full(cfg.n_frames, float(strain)),
            "lights": np.full(cfg.n_frames, float(light)),
        }
    return DemoPose(sequences, labels)


def generate_demo_pose(cfg: DemoPoseConfig, seed: int) -> dict[str, PoseSequence]:
    """The synthetic sequences ``seq0000``, ``seq0001``, ... for ``cfg`` and ``seed``."""
    return generate_demo(cfg, seed).sequences


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


def to_label_dict(labels: dict[str, dict[str, np.ndarray]]) -> dict:
    """MABe22's test-label layout (:mod:`strata.pose.labels`) of :attr:`DemoPose.labels`:
    sequences contiguous in the given order, every task Discrete, ``sequence_level_tasks``
    naming :data:`SEQUENCE_TASKS`."""
    tasks = [*FRAME_TASKS, *SEQUENCE_TASKS]
    names = list(labels)
    lengths = [len(labels[name][tasks[0]]) for name in names]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return {
        "vocabulary": tasks,
        "task_type": ["Discrete"] * len(tasks),
        "label_array": np.stack(
            [np.concatenate([labels[name][task] for name in names]) for task in tasks]
        ).astype(np.float32),
        "frame_number_map": {
            name: (int(starts[i]), int(starts[i + 1])) for i, name in enumerate(names)
        },
        "sequence_level_tasks": list(SEQUENCE_TASKS),
    }


def write_demo_pose(
    cfg: DemoPoseConfig,
    seed: int,
    npy_path: Path,
    parquet_path: Path,
    labels_path: Path | None = None,
) -> None:
    """Write the demo as a MABe22 ``.npy`` dict and as the long parquet table and, with
    ``labels_path``, its labels as a MABe22 test-label ``.npy`` (all atomically)."""
    demo = generate_demo(cfg, seed)
    # our own freshly built dicts: pickling them is how the real MABe22 files are made
    with atomic_path(npy_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, to_mabe_dict(demo.sequences), allow_pickle=True)
    write_parquet(to_long_frame(demo.sequences), parquet_path)
    if labels_path is not None:
        with atomic_path(labels_path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, to_label_dict(demo.labels), allow_pickle=True)
