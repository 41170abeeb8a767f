"""Cached inputs of the evaluation stages and their deterministic splits.

Pose: windows from ``results/cache/pose`` (:class:`strata.training.datasets.PoseWindows`);
held-out = the windows of the last ``pose_test_sequences`` sequences in sorted name
order (a split by sequence, so overlapping windows of one sequence never straddle it).
CT: studies from ``results/cache/ct/manifest.parquet``; probes use leave-one-study-out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from strata.models.registry import FAMILIES
from strata.training.datasets import CTVolumes, PoseWindows


def pose_windows(cache_dir: Path) -> PoseWindows:
    return PoseWindows(Path(cache_dir) / "pose" / "manifest.parquet", Path(cache_dir) / "pose" / "shards")


def ct_volumes(cache_dir: Path) -> CTVolumes:
    return CTVolumes(Path(cache_dir) / "ct" / "manifest.parquet")


def held_out_sequences(sequences: pd.Series | list[str], n_test: int) -> list[str]:
    """The held-out sequences: the last ``n_test`` names in sorted order (at least one
    sequence always stays for training)."""
    names = sorted(set(sequences))
    if len(names) < 2:
        raise ValueError(f"a split by sequence needs at least 2 sequences, got {len(names)}")
    return names[-min(n_test, len(names) - 1):]


def pose_test_mask(table: pd.DataFrame, n_test: int) -> np.ndarray:
    """Per manifest row (window), True when its sequence is held out."""
    return table["sequence"].isin(held_out_sequences(table["sequence"], n_test)).to_numpy()


def model_input(family: str, x: torch.Tensor, data: str) -> torch.Tensor:
    """A batch of cached samples in the layout ``family`` takes: pose windows
    [B, T, 1, F] gain a channel axis for video models; CT [B, C, H, W, D] is unchanged."""
    if data == "pose" and FAMILIES[family].pose_layout == "video":
        return x.unsqueeze(1)  # (B, 1, T, 1, F)
    return x
