"""Training the hierarchical ViT-3D MAE with the shared loop: resume after SIGKILL, learning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import DEFAULT_CONFIG

from strata.config import ModelRunConfig, load_config
from strata.training.checkpoint import WEIGHTS
from strata.training.run import open_dataset, train_run


def write_config(path: Path, total_steps: int, save_every: int) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    run = raw["models"]["hiera3d"]["pose"]
    run["train"] = {**run["train"], "total_steps": total_steps, "save_every": save_every}
    path.write_text(yaml.safe_dump(raw))
    return path


def training_command(config: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "strata.training", "--config", str(config), "--family", "hiera3d",
            "--run", "pose", "--cache", str(cache), "--out", str(out), "--threads", "1"]


def test_sigkill_then_rerun_resumes_to_identical_weights(tmp_path, pose_cache):
    config = write_config(tmp_path / "config.yaml", total_steps=40, save_every=8)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(training_command(config, pose_cache, straight), check=True, capture_output=True)

    proc = subprocess.Popen(training_command(config, pose_cache, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "resume" / "8").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "resume" / "8").exists() and not (killed / "checkpoints" / "40").exists()

    subprocess.run(training_command(config, pose_cache, killed), check=True, capture_output=True)
    for step in (8, 16, 24, 32, 40):
        a = (straight / "checkpoints" / str(step) / WEIGHTS).read_bytes()
        b = (killed / "checkpoints" / str(step) / WEIGHTS).read_bytes()
        assert a == b, f"weights differ at step {step}"
    pd.testing.assert_frame_equal(pd.read_parquet(straight / "train_log.parquet"),
                                  pd.read_parquet(killed / "train_log.parquet"))
    assert not (killed / "resume").exists()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known (issue #14): on the three-time-scale demo data 300 steps end "
                   "above the per-patch-mean baseline (0.087 vs 0.070); the verdict tracks it")
def test_demo_training_beats_step_zero_and_the_per_patch_mean(tmp_path, pose_cache):
    """After the demo schedule, the masked-unit loss on a fixed held batch and fixed masks is
    clearly below the untrained model's and below predicting each hidden patch's mean."""
    cfg = load_config(DEFAULT_CONFIG)
    run: ModelRunConfig = cfg.models["hiera3d"]["pose"]
    dataset, _ = open_dataset("hiera3d", "pose", pose_cache)
    batch = torch.stack([dataset[i]["x"] for i in range(0, len(dataset), max(1, len(dataset) // 64))])

    from strata.models.registry import build_model

    torch.manual_seed(cfg.seed)
    untrained = build_model("hiera3d", run.architecture).eval()
    mask = untrained.random_masking(len(batch), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss_untrained = float(untrained(batch, mask)[0])
        baseline = float(untrained.per_patch_mean_loss(batch, mask))

    train_run("hiera3d", "pose", run, cfg.seed, pose_cache, tmp_path / "run")
    trained = build_model("hiera3d", run.architecture)
    from safetensors.torch import load_file

    last = max(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    trained.load_state_dict(load_file(str(tmp_path / "run" / "checkpoints" / str(last) / WEIGHTS)))
    with torch.no_grad():
        loss_trained = float(trained.eval()(batch, mask)[0])
    assert loss_trained < 0.7 * loss_untrained, (loss_trained, loss_untrained)
    assert loss_trained < 0.9 * baseline, (loss_trained, baseline)
