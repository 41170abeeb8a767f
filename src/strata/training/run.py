"""One training run from config to checkpoints (what the ``train_<family>`` rules call)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from strata.config import ConfigError, ModelRunConfig, config_sha256, to_dict
from strata.models.registry import FAMILIES, build_model
from strata.training.checkpoint import run_meta
from strata.training.config import MonitorConfig
from strata.training.datasets import (
    CTVolumes,
    PoseSequences,
    PoseWindows,
    data_hashes,
    pad_pose_sequences,
)
from strata.training.device import resolve_device
from strata.training.loop import RunSpec, device_and_autocast, train


class ChannelAxis(Dataset):
    """Adds the channel axis video models expect to a pose window: [T, 1, F] -> [1, T, 1, F]."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.inner[i])
        item["x"], item["valid"] = item["x"].unsqueeze(0), item["valid"].unsqueeze(0)
        return item


def open_dataset(family: str, data: str, cache_dir: Path, unit: str = "windows") -> tuple[Dataset, list[Path]]:
    """The run's dataset and the manifests it depends on (``cache_dir`` = results/cache).

    ``unit="sequences"`` (pose VAE on pose data): whole sequences of any length, batched
    with :func:`strata.training.datasets.pad_pose_sequences`.
    """
    if unit == "sequences":
        if data != "pose" or FAMILIES[family].pose_layout != "sequence":
            raise ConfigError(f"models.{family}: unit 'sequences' needs data 'pose' and a sequence model "
                              f"(posevae), got data {data!r} for {family!r}")
        path = cache_dir / "pose" / "sequences.safetensors"
        return PoseSequences(path), [path]
    if unit != "windows":
        raise ConfigError(f"models.{family}: unit must be 'windows' or 'sequences', got {unit!r}")
    if data == "pose":
        manifest = cache_dir / "pose" / "manifest.parquet"
        dataset: Dataset = PoseWindows(manifest, cache_dir / "pose" / "shards")
        if FAMILIES[family].pose_layout == "video":
            dataset = ChannelAxis(dataset)
        return dataset, [manifest]
    manifest = cache_dir / "ct" / "manifest.parquet"
    return CTVolumes(manifest), [manifest]


def train_run(family: str, run: str, cfg: ModelRunConfig, seed: int, cache_dir: Path, run_dir: Path, *,
              gpus: int | None = None, monitor: MonitorConfig | None = None) -> pd.DataFrame:
    """Build the model (seeded), open its data and train it with the shared loop.

    ``gpus``: GPUs the job asks for (its Snakemake ``gpu`` resource; default the run's
    ``train.gpus``); fewer visible ones stop the run here unless ``train.allow_cpu``.
    ``monitor``: progress lines, live step log, TensorBoard (default :class:`MonitorConfig`;
    never part of the fingerprint).
    """
    where = f"models.{family}.{run}.train"
    device_type = resolve_device(f"{family}/{run}", f"{where}.gpus",
                                 cfg.train.gpus if gpus is None else gpus, cfg.train.allow_cpu)
    dataset, manifests = open_dataset(family, cfg.data, cache_dir, cfg.unit)
    torch.manual_seed(seed)
    model = build_model(family, cfg.architecture, where=f"models.{family}.{run}.architecture")
    config = {"family": family, "run": run, **to_dict(cfg)}
    hashes = data_hashes(manifests)
    fingerprint = config_sha256({"config": config, "seed": seed, "data": hashes})
    device, _ = device_and_autocast(cfg.train.precision, device_type)
    spec = RunSpec(train=cfg.train, seed=seed, run_dir=run_dir, meta=run_meta(config, seed, hashes, device),
                   architecture=cfg.architecture, fingerprint=fingerprint, name=f"{family}/{run}",
                   device_type=device_type, monitor=monitor or MonitorConfig())
    return train(model, dataset, spec, collate_fn=pad_pose_sequences if cfg.unit == "sequences" else None)
