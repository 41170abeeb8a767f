"""Datasets over the cached features (pose window shards, preprocessed CT volumes)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from strata.io.atomic import sha256_files


class PoseWindows(Dataset):
    """Pose windows from ``results/cache/pose`` (shards listed by the manifest, in order).

    Items: ``x`` float32 [T, 1, F], ``valid`` uint8 [T, 1, F], ``labels`` int64 [T].
    All shards are held in memory (the full MABe22 set of 400 x 72 windows is a few GB).
    """

    def __init__(self, manifest: Path, shards_dir: Path) -> None:
        table = pd.read_parquet(manifest)
        parts = {name: load_file(str(Path(shards_dir) / name)) for name in table["shard"].unique()}
        self.x = torch.cat([parts[n]["x"] for n in parts])
        self.valid = torch.cat([parts[n]["valid"] for n in parts])
        self.labels = torch.cat([parts[n]["labels"] for n in parts])
        self.table = table
        if len(self.x) != len(table):
            raise ValueError(f"{manifest}: lists {len(table)} windows but the shards hold {len(self.x)}")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "valid": self.valid[i], "labels": self.labels[i]}


class CTVolumes(Dataset):
    """Preprocessed CT volumes listed by ``results/cache/ct/manifest.parquet``.

    Items: ``x`` float32 [C, H, W, D] (the cached image) and ``masks`` uint8 [10, H, W, D].
    Files are read on access, so DataLoader workers spread the I/O.
    """

    def __init__(self, manifest: Path) -> None:
        self.table = pd.read_parquet(manifest)
        self.files = [Path(p) for p in self.table["cache_file"]]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tensors = load_file(str(self.files[i]))
        return {"x": tensors["image"].float(), "masks": tensors["masks"]}


def data_hashes(paths: list[Path]) -> dict[str, str]:
    """Content hashes of the manifests a run reads (recorded with every checkpoint)."""
    return {str(p): sha256_files([p]) for p in paths}
