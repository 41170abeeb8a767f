"""Non-learned baselines of the embedding models, probed like the embeddings, row for row.

Every evaluate job of a hierarchical ViT-3D or H-JEPA run scores, beside the checkpoint
(``trained``), on exactly the rows and splits of each level:

* ``random_init``: the same architecture at its seeded random initialisation (checkpoint
  step 0 that every training writes first; :meth:`TrainConfig.checkpoint_steps`);
* ``pca``: the raw model input at the level's scale (pose: the frames of the row's time
  token, flattened, with the velocity channels when the run embeds them; CT: the cached volume average-pooled to :data:`POOLED`), reduced by PCA
  to the level's feature width, fitted on each probe's training part (:func:`strata.evaluation.probes.fit_predict`);
* a domain baseline: pose ``kinematic`` (per mouse: centre speed, nose-to-tail-base length,
  heading change; pairwise centre distances; averaged over the level's time token), CT
  ``mask_volume`` (voxels of each of the 10 region masks);
* ``constant``: one constant feature (the probe can only learn the class prior).

The margin the summary reports is to the strongest of the *non-domain* baselines
(:data:`strata.evaluation.model_names.DOMAIN`): a domain baseline encodes what the labels
were made from, so beating it is not expected of a self-supervised model on every task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from torch.nn.functional import adaptive_avg_pool3d

from strata.evaluation.data import ct_volumes, pose_windows
from strata.evaluation.model_names import CONSTANT, KINEMATIC, MASK_VOLUME, PCA_RAW
from strata.models.blocks import with_velocity
from strata.pose.keypoints import KEYPOINT_INDEX, N_KEYPOINTS

#: CT PCA baseline: the grid each cached volume is average-pooled to first (per channel)
POOLED = (16, 16, 8)


@dataclass(frozen=True)
class Features:
    """One model's features for a level's rows; ``reduce_to``: PCA width inside the probe."""

    x: np.ndarray
    reduce_to: int | None = None


def pose_token_spans(rows: pd.DataFrame, windows: np.ndarray) -> np.ndarray:
    """The raw frames of each row's time token, flattened: [N, span * F] (``windows``
    [W, T, F]; rows carry ``sample_id`` = window id, ``token`` and ``time_tokens``)."""
    t = int(rows["time_tokens"].iloc[0])
    span = windows.shape[1] // t
    ids = rows["sample_id"].astype(np.int64).to_numpy()
    tokens = rows["token"].to_numpy(np.int64)
    frames = tokens[:, None] * span + np.arange(span)[None]  # (N, span)
    return windows[ids[:, None], frames].reshape(len(rows), -1)


def kinematics(windows: np.ndarray) -> np.ndarray | None:
    """Per frame kinematic features [W, T, 4A + A(A-1)/2] of windows [W, T, A*K*2] (None when
    the feature width is not MABe22's 12 keypoints per agent)."""
    w, t, f = windows.shape
    if f % (N_KEYPOINTS * 2):
        return None
    a = f // (N_KEYPOINTS * 2)
    k = windows.reshape(w, t, a, N_KEYPOINTS, 2)
    centre = k[..., KEYPOINT_INDEX["center"], :]  # (W, T, A, 2)
    axis = k[..., KEYPOINT_INDEX["nose"], :] - k[..., KEYPOINT_INDEX["tail_base"], :]
    velocity = np.diff(centre, axis=1, prepend=centre[:, :1])
    velocity[:, 0] = velocity[:, 1] if t > 1 else 0.0
    heading = np.unwrap(np.arctan2(axis[..., 1], axis[..., 0]), axis=1)
    turn = np.diff(heading, axis=1, prepend=heading[:, :1])
    pairs = [(i, j) for i in range(a) for j in range(i + 1, a)]
    distance = [np.linalg.norm(centre[:, :, i] - centre[:, :, j], axis=-1) for i, j in pairs]
    parts = [np.linalg.norm(velocity, axis=-1), np.linalg.norm(axis, axis=-1), turn, np.abs(turn),
             *(d[..., None] for d in distance)]
    return np.concatenate(parts, axis=-1)


def mean_over_token(per_frame: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """Per-frame features [W, T, D] averaged over each row's time token: [N, D]."""
    t = int(rows["time_tokens"].iloc[0])
    span = per_frame.shape[1] // t
    per_token = per_frame.reshape(per_frame.shape[0], t, span, -1).mean(axis=2)
    return per_token[rows["sample_id"].astype(np.int64).to_numpy(), rows["token"].to_numpy(np.int64)]


class PoseBaselines:
    """The pose baselines' features per level (cached windows read once); ``velocity_gain``:
    the run's (:func:`strata.models.blocks.with_velocity`), so PCA reads what the model reads."""

    def __init__(self, cache_dir: Path, velocity_gain: float = 0.0) -> None:
        data = pose_windows(cache_dir)
        self.windows = data.x.reshape(data.x.shape[0], data.x.shape[1], -1).numpy().astype(np.float64)
        video = rearrange(torch.from_numpy(self.windows), "w t f -> w 1 t 1 f")
        self.inputs = rearrange(with_velocity(video, velocity_gain), "w c t 1 f -> w t (c f)").numpy()
        self.kinematic = kinematics(self.windows)

    def level(self, rows: pd.DataFrame, width: int) -> Iterator[tuple[str, Features]]:
        yield PCA_RAW, Features(pose_token_spans(rows, self.inputs), width)
        if self.kinematic is not None:
            yield KINEMATIC, Features(mean_over_token(self.kinematic, rows))
        yield CONSTANT, Features(np.zeros((len(rows), 1)))


class CTBaselines:
    """The CT baselines' features per study (volumes and masks read once)."""

    def __init__(self, cache_dir: Path) -> None:
        data = ct_volumes(cache_dir)
        ids = data.table["study_id"].astype(str).tolist()
        self.index = {s: i for i, s in enumerate(ids)}
        pooled, mask_volumes = [], []
        for i in range(len(data)):  # one study in memory at a time
            item = data[i]
            # the PCA baseline's input: the volume average-pooled to POOLED voxels per channel, so
            # a cohort of thousands of full-size studies fits in memory (3 x 256 x 256 x 64 -> 2,048)
            pooled.append(adaptive_avg_pool3d(item["x"][None], POOLED).reshape(-1).numpy())
            mask_volumes.append(item["masks"].reshape(item["masks"].shape[0], -1).sum(-1).numpy())
        self.volumes = np.stack(pooled).astype(np.float64)
        self.mask_volumes = np.stack(mask_volumes).astype(np.float64)

    def level(self, rows: pd.DataFrame, width: int) -> Iterator[tuple[str, Features]]:
        order = np.array([self.index[s] for s in rows["sample_id"].astype(str)])
        yield PCA_RAW, Features(self.volumes[order], width)
        yield MASK_VOLUME, Features(self.mask_volumes[order])
        yield CONSTANT, Features(np.zeros((len(rows), 1)))
