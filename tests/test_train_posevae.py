"""Training the pose VAE with the shared loop on the demo's cached pose windows."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Subset

from strata.config import load_config
from strata.models.registry import build_model
from strata.training.checkpoint import WEIGHTS
from strata.training.loop import RunSpec, train
from strata.training.run import open_dataset

from conftest import DEFAULT_CONFIG


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    return float((((pred - target) ** 2) * valid).sum() / valid.sum())


def test_reconstruction_of_held_out_sequences_beats_the_mean_pose(tmp_path, pose_cache):
    """Train on the windows of 10 demo sequences; on the 2 held-out sequences the
    reconstruction error (observed keypoints only) is well below predicting each
    sequence's mean pose."""
    cfg = load_config(DEFAULT_CONFIG)
    run = cfg.models["posevae"]["pose"]
    dataset, _ = open_dataset("posevae", "pose", pose_cache)
    sequences = dataset.table["sequence"].to_numpy()
    held_out = set(sorted(set(sequences))[-2:])
    train_idx = np.flatnonzero(~np.isin(sequences, list(held_out))).tolist()
    test_idx = np.flatnonzero(np.isin(sequences, list(held_out))).tolist()
    assert len(test_idx) >= 8

    torch.manual_seed(cfg.seed)
    model = build_model("posevae", run.architecture)
    spec = RunSpec(train=run.train, seed=cfg.seed, run_dir=tmp_path, meta={}, architecture=run.architecture,
                   fingerprint="test")
    log = train(model, Subset(dataset, train_idx), spec)
    assert log["recon"].iloc[-10:].mean() < 0.5 * log["recon"].iloc[:3].mean()

    trained = build_model("posevae", run.architecture)
    trained.load_state_dict(load_file(str(tmp_path / "checkpoints" / str(run.train.total_steps) / WEIGHTS)))
    trained.eval()
    x = torch.stack([dataset[i]["x"] for i in test_idx])[:, :, 0]  # (N, T, F)
    valid = torch.stack([dataset[i]["valid"] for i in test_idx])[:, :, 0].float()
    with torch.no_grad():
        recon = trained.reconstruct(x, valid).recon
    mean_pose = torch.zeros_like(x)
    test_sequences = sequences[test_idx]
    for name in held_out:  # each held-out sequence's mean pose over all its observed frames
        rows = torch.from_numpy(test_sequences == name)
        mean_pose[rows] = (x[rows] * valid[rows]).sum((0, 1)) / valid[rows].sum((0, 1)).clamp_min(1)
    error, baseline = masked_mse(recon, x, valid), masked_mse(mean_pose, x, valid)
    assert error < 0.5 * baseline, (error, baseline)
