"""The in-memory form of one pose sequence, shared by readers, demo and processing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoseSequence:
    """One clip of keypoint tracks.

    Attributes:
        keypoints: float32 ``[T, A, K, 2]`` pixel coordinates (x, y); NaN where missing.
        labels: int64 ``[T]`` per-frame behaviour (-1 where unknown), or None if the source
            has no labels.
    """

    keypoints: np.ndarray
    labels: np.ndarray | None

    @property
    def n_frames(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def n_agents(self) -> int:
        return int(self.keypoints.shape[1])
