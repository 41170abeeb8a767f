"""Datasets over the cached features (pose window shards, whole pose sequences,
preprocessed CT volumes)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from strata.ct.cache_format import read_study
from strata.io.atomic import sha256_files
from strata.io.tensor_files import load_tensors, read_tensor_metadata
from strata.pose.keypoints import UNKNOWN_LABEL


class PoseWindows(Dataset):
    """Pose windows from ``results/cache/pose`` (shards listed by the manifest, in order).

    Items: ``x`` float32 [T, 1, F], ``valid`` uint8 [T, 1, F], ``labels`` int64 [T].
    All shards are held in memory (the full MABe22 set of 400 x 72 windows is a few GB).
    """

    def __init__(self, manifest: Path, shards_dir: Path) -> None:
        table = pd.read_parquet(manifest)
        parts = {name: load_tensors(str(Path(shards_dir) / name)) for name in table["shard"].unique()}
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


class PoseSequences(Dataset):
    """Whole pose sequences from ``results/cache/pose/sequences.safetensors`` (written by
    ``preprocess_pose``: cleaned and normalised as the windows, never cut).

    Items: ``x`` float32 [T_s, 1, F], ``valid`` uint8 [T_s, 1, F], ``labels`` int64 [T_s],
    with T_s the sequence's own length; batch them with :func:`pad_pose_sequences`.
    ``table`` lists ``sequence``, ``start`` (0), ``stop`` (T_s) and ``valid_fraction`` per item.
    """

    def __init__(self, path: Path) -> None:
        tensors = load_tensors(str(path))
        meta = read_tensor_metadata(path)
        offsets = tensors["offsets"]
        names = meta.get("sequences", [])
        if offsets.ndim != 1 or len(offsets) != len(names) + 1 or int(offsets[-1]) != len(tensors["x"]):
            raise ValueError(f"{path}: offsets {tuple(offsets.shape)} do not match {len(names)} sequences "
                             f"of {len(tensors['x'])} frames in total")
        self.x, self.valid, self.labels = tensors["x"], tensors["valid"], tensors["labels"]
        self.bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        self.table = pd.DataFrame({"sequence": names, "start": 0,
                                   "stop": [b - a for a, b in self.bounds],
                                   "valid_fraction": meta.get("valid_fraction", [float("nan")] * len(names))})

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = self.bounds[i]
        return {"x": self.x[a:b, None], "valid": self.valid[a:b, None], "labels": self.labels[a:b]}


def pad_pose_sequences(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate sequences of different lengths: pad to the longest (x 0, valid 0, labels -1)
    and add ``frame_mask`` bool [B, T_max] (True: real frame); nothing is truncated."""
    lengths = torch.tensor([len(item["x"]) for item in items])
    batch = {key: pad_sequence([item[key] for item in items], batch_first=True,
                               padding_value=UNKNOWN_LABEL if key == "labels" else 0)
             for key in ("x", "valid", "labels")}
    batch["frame_mask"] = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (B, T_max)
    return batch


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
        tensors = read_study(self.files[i])
        return {"x": tensors["image"].float(), "masks": tensors["masks"]}


def data_hashes(paths: list[Path]) -> dict[str, str]:
    """Content hashes of the manifests a run reads (recorded with every checkpoint)."""
    return {str(p): sha256_files([p]) for p in paths}
