"""The ``preprocess_pose`` stage: a pose file -> windowed safetensors shards + a manifest.

Outputs (both written atomically, and only after the whole input has been validated, so
a bad input leaves neither):

``<shards_dir>/shard-00000.safetensors``, ... — ``shard_size`` windows each (the last
may be shorter), tensors

* ``x``      float32 ``[N, T, 1, F]`` — window features, F = agents * 12 * 2 in
  (agent, keypoint, xy) order, interpolated where missing, normalised per the config;
* ``valid``  uint8   ``[N, T, 1, F]`` — 1 where the keypoint was observed, 0 where filled;
* ``labels`` int64   ``[N, T]``       — per-frame behaviour, -1 where unknown;

and safetensors metadata (``strata.io.tensor_files.read_tensor_metadata``): ``source_sha256``,
``params`` (the config) and ``keypoints`` (names in feature order).

``<manifest>`` (parquet), one row per window, in shard order:

=================  =======  ===================================================
column             type     meaning
=================  =======  ===================================================
window_id          int64    0..N-1 over all shards, in order
shard              string   shard file name (``shard-00000.safetensors``)
index              int64    row of the window inside its shard
sequence           string   sequence name in the source file
start              int64    first frame of the window (inclusive)
stop               int64    end frame (exclusive): start + window
valid_fraction     float64  fraction of observed (not interpolated) entries
label              int64    majority behaviour over the window, -1 if none known
source_sha256      string   SHA-256 of the input file
params_sha256      string   SHA-256 of the JSON of the preprocessing config
=================  =======  ===================================================

``<sequences>`` (optional, safetensors; what ``unit: sequences`` training runs read): every
whole sequence, cleaned and normalised exactly as the windows are, never cut, concatenated
along the frame axis:

* ``x``       float32 ``[sum T_s, F]``, ``valid`` uint8 ``[sum T_s, F]``, ``labels`` int64
  ``[sum T_s]``;
* ``offsets`` int64 ``[S + 1]`` — sequence ``s`` is frames ``offsets[s]:offsets[s + 1]``;

with metadata ``sequences`` (names, in sorted order), ``valid_fraction`` (per sequence),
``source_sha256``, ``params`` and ``keypoints``. A sequence is kept when its observed
fraction over the whole sequence is at least ``min_valid_fraction``.

Sequences are processed in sorted name order, so two runs give identical bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from strata.config import ConfigError, PosePreprocessConfig, config_sha256, to_dict
from strata.io.atomic import atomic_dir, sha256_files, write_parquet
from strata.io.tensor_files import save_tensors
from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import KEYPOINTS, UNKNOWN_LABEL
from strata.pose.processing import (
    check_agents_observed,
    cut_windows,
    majority_labels,
    observed_mask,
    prepare_sequence,
    window_starts,
    window_valid_fraction,
)
from strata.pose.readers import read_pose_file
from strata.pose.sequence import PoseSequence

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "window_id",
    "shard",
    "index",
    "sequence",
    "start",
    "stop",
    "valid_fraction",
    "label",
    "source_sha256",
    "params_sha256",
)


@dataclass(frozen=True)
class _SequencePlan:
    """The windows kept for one sequence, decided before anything is written."""

    name: str
    starts: np.ndarray
    valid_fraction: np.ndarray
    keep_sequence: bool  # whole-sequence observed fraction >= min_valid_fraction
    sequence_valid_fraction: float


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def _check_config(cfg: PosePreprocessConfig) -> None:
    problems = []
    if cfg.window < 1:
        problems.append(f"window must be >= 1, got {cfg.window}")
    if cfg.stride < 1:
        problems.append(f"stride must be >= 1, got {cfg.stride}")
    if cfg.shard_size < 1:
        problems.append(f"shard_size must be >= 1, got {cfg.shard_size}")
    if cfg.arena_px <= 0:
        problems.append(f"arena_px must be > 0, got {cfg.arena_px}")
    if not 0.0 <= cfg.min_valid_fraction <= 1.0:
        problems.append(f"min_valid_fraction must be in [0, 1], got {cfg.min_valid_fraction}")
    if problems:
        raise ConfigError("preprocess.pose: " + "; ".join(problems))


# Keypoints may lie off the arena by this many arena widths (tracking errors near the walls)
# before a coordinate is taken for corrupt data rather than a position.
ARENA_MARGIN = 1.0


def check_coordinates(keypoints: np.ndarray, arena_px: float, where: str) -> None:
    """Refuse infinite coordinates and positions far outside the arena (NaN = missing is fine):
    a single 1e30 px keypoint would otherwise reach the training cache as ~1e27."""
    low, high = -ARENA_MARGIN * arena_px, (1 + ARENA_MARGIN) * arena_px
    with np.errstate(invalid="ignore"):
        bad = np.isinf(keypoints) | (keypoints < low) | (keypoints > high)
    if bad.any():
        frame, agent, keypoint, axis = (int(i) for i in np.argwhere(bad)[0])
        raise PoseFormatError(
            f"{where}: frame {frame}, agent {agent}, keypoint {KEYPOINTS[keypoint]!r} has "
            f"{'xy'[axis]} = {keypoints[frame, agent, keypoint, axis]:g} px; coordinates must be finite and "
            f"within [{low:g}, {high:g}] (the {arena_px:g} px arena plus {ARENA_MARGIN:g} arena width each "
            f"side; preprocess.pose.arena_px sets the arena), or NaN where missing ({int(bad.sum())} such values)"
        )


def _plan(
    sequences: dict[str, PoseSequence], cfg: PosePreprocessConfig, source: Path
) -> list[_SequencePlan]:
    """Validate every sequence and choose its windows; raises before any output exists."""
    plans = []
    n_agents = None
    for name in sorted(sequences):
        seq = sequences[name]
        where = f"{source}, sequence {name!r}"
        if n_agents is None:
            n_agents = seq.n_agents
        elif seq.n_agents != n_agents:
            raise PoseFormatError(
                f"{where}: has {seq.n_agents} agents but earlier sequences have {n_agents} "
                "(every window must have the same feature count)"
            )
        if seq.n_frames < cfg.window:
            raise PoseFormatError(
                f"{where}: {seq.n_frames} frames, shorter than one window of {cfg.window}"
            )
        check_coordinates(seq.keypoints, cfg.arena_px, where)
        observed = observed_mask(seq.keypoints)
        check_agents_observed(observed, where)
        starts = window_starts(seq.n_frames, cfg.window, cfg.stride)
        fraction = window_valid_fraction(observed, starts, cfg.window)
        keep = fraction >= cfg.min_valid_fraction
        whole = float(observed.mean())
        plans.append(_SequencePlan(name, starts[keep], fraction[keep], whole >= cfg.min_valid_fraction, whole))
    if sum(len(p.starts) for p in plans) == 0:
        raise PoseFormatError(
            f"{source}: no window has a valid fraction >= "
            f"min_valid_fraction={cfg.min_valid_fraction}"
        )
    return plans


class _ShardWriter:
    """Collects windows and writes a shard every ``shard_size`` windows."""

    def __init__(self, out_dir: Path, shard_size: int, metadata: dict[str, object]) -> None:
        self.out_dir, self.shard_size, self.metadata = out_dir, shard_size, metadata
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._count = 0
        self.n_shards = 0

    def add(self, x: np.ndarray, valid: np.ndarray, labels: np.ndarray) -> None:
        self._parts.append((x, valid, labels))
        self._count += len(x)
        while self._count >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> None:
        if self._count:
            self._flush(self._count)

    def _flush(self, n: int) -> None:
        taken: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        need = n
        while need:  # take exactly n windows from the front, copying each window once
            x, valid, labels = self._parts[0]
            if len(x) <= need:
                taken.append(self._parts.pop(0))
                need -= len(x)
            else:
                taken.append((x[:need], valid[:need], labels[:need]))
                self._parts[0] = (x[need:], valid[need:], labels[need:])
                need = 0
        x, valid, labels = (np.concatenate(arrays) for arrays in zip(*taken, strict=True))
        save_tensors(
            {
                "x": torch.from_numpy(x),
                "valid": torch.from_numpy(valid),
                "labels": torch.from_numpy(labels),
            },
            self.out_dir / shard_name(self.n_shards),
            metadata=self.metadata,
            written_by="preprocess_pose",
        )
        self.n_shards += 1
        self._count -= n


def preprocess_pose(
    cfg: PosePreprocessConfig,
    source: Path,
    shards_dir: Path,
    manifest: Path,
    sequences_file: Path | None = None,
) -> pd.DataFrame:
    """Read ``source``, cut windows per ``cfg`` and write shards and the manifest.

    Args:
        cfg: the ``preprocess.pose`` config.
        source: pose file (``.npy`` MABe22 dict, ``.parquet`` or ``.csv`` long table).
        shards_dir: output directory of the shards (replaced atomically).
        manifest: output parquet path (see the module docstring for its schema).
        sequences_file: if given, also write the whole sequences there (see the module
            docstring); it is held in memory until written, as large as the cleaned input.

    Returns:
        The manifest table that was written.

    Raises:
        PoseFormatError: naming the file (and sequence/agent) for unreadable, unsafe or
            unusable input; nothing is written then.
    """
    source, shards_dir, manifest = Path(source), Path(shards_dir), Path(manifest)
    _check_config(cfg)
    source_sha = sha256_files([source])
    params_sha = config_sha256(cfg)
    sequences = read_pose_file(source)
    plans = _plan(sequences, cfg, source)
    n_windows = sum(len(p.starts) for p in plans)
    log.info(
        "%s: %d sequences, %d windows of %d frames (stride %d)",
        source,
        len(plans),
        n_windows,
        cfg.window,
        cfg.stride,
    )

    metadata = {"source_sha256": source_sha, "params": to_dict(cfg), "keypoints": list(KEYPOINTS)}
    rows = []
    whole: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]] = []
    with atomic_dir(shards_dir) as tmp_dir:
        writer = _ShardWriter(tmp_dir, cfg.shard_size, metadata)
        for plan in tqdm(plans, desc="preprocess_pose", unit="seq"):
            keep_whole = sequences_file is not None and plan.keep_sequence
            if not len(plan.starts) and not keep_whole:
                continue
            seq = sequences[plan.name]
            features, valid = prepare_sequence(
                seq.keypoints,
                cfg.center,
                cfg.arena_px,
                cfg.egocentric,
                f"{source}, sequence {plan.name!r}",
            )
            labels = (
                seq.labels
                if seq.labels is not None
                else np.full(seq.n_frames, UNKNOWN_LABEL, np.int64)
            )
            if keep_whole:
                whole.append((plan.name, plan.sequence_valid_fraction, features, valid, labels))
            if not len(plan.starts):
                continue
            label_windows = cut_windows(labels, plan.starts, cfg.window)
            writer.add(
                cut_windows(features, plan.starts, cfg.window)[:, :, None, :],
                cut_windows(valid, plan.starts, cfg.window)[:, :, None, :],
                label_windows,
            )
            rows.append(
                pd.DataFrame(
                    {
                        "sequence": plan.name,
                        "start": plan.starts,
                        "stop": plan.starts + cfg.window,
                        "valid_fraction": plan.valid_fraction.astype(np.float64),
                        "label": majority_labels(label_windows),
                    }
                )
            )
        writer.close()
        log.info("wrote %d shard(s) to %s", writer.n_shards, shards_dir)

    table = pd.concat(rows, ignore_index=True)
    window_id = np.arange(len(table), dtype=np.int64)
    table.insert(0, "window_id", window_id)
    table.insert(1, "shard", [shard_name(i) for i in window_id // cfg.shard_size])
    table.insert(2, "index", window_id % cfg.shard_size)
    table["source_sha256"] = source_sha
    table["params_sha256"] = params_sha
    table = table.astype(
        {
            "sequence": str,
            "shard": str,
            "start": np.int64,
            "stop": np.int64,
            "label": np.int64,
            "source_sha256": str,
            "params_sha256": str,
        }
    )
    write_parquet(table[list(MANIFEST_COLUMNS)], manifest)
    log.info("wrote manifest %s (%d rows)", manifest, len(table))
    if sequences_file is not None:
        _write_sequences(whole, Path(sequences_file), metadata, source)
    return table


def _write_sequences(
    whole: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
    metadata: dict[str, object],
    source: Path,
) -> None:
    """Concatenate the kept whole sequences and write them atomically (module docstring)."""
    if not whole:
        raise PoseFormatError(f"{source}: no whole sequence has a valid fraction >= min_valid_fraction")
    names, fractions, features, valid, labels = zip(*whole, strict=True)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])]).astype(np.int64)
    save_tensors(
        {
            "x": torch.from_numpy(np.concatenate(features)),
            "valid": torch.from_numpy(np.concatenate(valid)),
            "labels": torch.from_numpy(np.concatenate(labels).astype(np.int64)),
            "offsets": torch.from_numpy(offsets),
        },
        path,
        metadata={**metadata, "sequences": list(names), "valid_fraction": list(fractions)},
        written_by="preprocess_pose",
    )
    log.info("wrote %d whole sequences (%d frames) to %s", len(names), offsets[-1], path)
