"""Watching a run (progress lines, live step log, TensorBoard) and the honest device choice."""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd
import pytest
import torch
from conftest import DEFAULT_CONFIG
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training_loop import Interrupted, TinyDenoiser, dataset, fresh_model, spec

from strata.config import load_config
from strata.logging_setup import snakemake_logging
from strata.training.config import MonitorConfig
from strata.training.device import GPUUnavailableError, resolve_device
from strata.training.loop import train
from strata.training.monitor import LIVE_LOG, TENSORBOARD
from strata.training.run import train_run

NO_GPU = pytest.mark.skipif(torch.cuda.device_count() > 0, reason="needs a machine where torch sees no GPU")
CADENCE = [4, 8, 12, 16, 20, 24, 28, 30]  # every 4th of 30 steps, and the last


class Watched(TinyDenoiser):
    """The loop test's model, reading the live step log while the run goes on."""

    def __init__(self, live_log, fail_at=None) -> None:
        super().__init__(fail_at)
        self.live_log, self.seen = live_log, {}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if step + 1 in (14, 21):  # before this step's own monitor call
            self.seen[step + 1] = pd.read_parquet(self.live_log)["step"].tolist()
        super().after_optimizer_step(step, total_steps)


def watched_model(live_log, fail_at=None) -> Watched:
    torch.manual_seed(7)
    return Watched(live_log, fail_at)


def scalars(folder, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_run_writes_progress_lines_live_log_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    model = watched_model(run_dir / LIVE_LOG)
    with snakemake_logging(tmp_path / "rule.log"):
        log = train(model, dataset(), dataclasses.replace(
            spec(run_dir), name="tiny/run", monitor=MonitorConfig(log_every=4, tensorboard=True)))
    # readable during the run, at the log_every cadence
    assert model.seen == {14: [4, 8, 12], 21: [4, 8, 12, 16, 20]}
    live = pd.read_parquet(run_dir / LIVE_LOG)
    assert live["step"].tolist() == CADENCE
    assert {"loss", "lr", "grad_norm", "kept", "samples_per_s", "wall_time"} <= set(live.columns)
    assert (live["samples_per_s"] > 0).all()
    at_cadence = log.set_index("step").loc[CADENCE]
    for column in ("loss", "lr", "grad_norm", "kept"):
        assert live[column].tolist() == at_cadence[column].tolist(), column
    # TensorBoard scalars read back
    for tag, column in (("train/loss", "loss"), ("train/lr", "lr"), ("train/samples_per_s", "samples_per_s")):
        steps, values = zip(*scalars(run_dir / TENSORBOARD, tag))
        assert list(steps) == CADENCE
        assert values == pytest.approx(live[column].tolist(), rel=1e-6)
    # one progress line per logged step in the rule's log
    lines = (tmp_path / "rule.log").read_text().splitlines()
    progress = [line for line in lines if "tiny/run step " in line]
    assert len(progress) == len(CADENCE)
    assert "tiny/run step 12/30 (40%) loss " in progress[2] and " samples/s ETA 0:00:" in progress[2]
    assert any("training tiny/run on cpu, fp32" in line for line in lines)


def test_resumed_run_continues_the_live_log_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    watched = dataclasses.replace(spec(run_dir), monitor=MonitorConfig(log_every=4, tensorboard=True))
    with pytest.raises(Interrupted):
        train(fresh_model(fail_at=15), dataset(), watched)
    assert pd.read_parquet(run_dir / LIVE_LOG)["step"].tolist() == [4, 8, 12]
    train(fresh_model(), dataset(), watched)  # resumes from step 10
    live = pd.read_parquet(run_dir / LIVE_LOG)
    assert live["step"].tolist() == CADENCE  # rows after the resume step replaced, none twice
    assert [step for step, _ in scalars(run_dir / TENSORBOARD, "train/loss")] == CADENCE


@NO_GPU
def test_a_run_asking_for_a_gpu_torch_does_not_see_stops_at_its_start(tmp_path):
    run = load_config(DEFAULT_CONFIG).models["hiera3d"]["pose"]
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, gpus=1))
    with pytest.raises(GPUUnavailableError) as err:
        train_run("hiera3d", "pose", run, 0, tmp_path / "no-cache", tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message
    for part in ("hiera3d/pose: models.hiera3d.pose.train.gpus is 1 but torch ", "sees 0 GPU(s)",
                 "make install TORCH=cuda", "models.hiera3d.pose.train.gpus: 0",
                 "models.hiera3d.pose.train.allow_cpu: true"):
        assert part in message, part
    assert not (tmp_path / "run").exists()


@NO_GPU
def test_allow_cpu_trains_on_the_cpu_and_says_so(tmp_path, pose_cache, caplog):
    run = load_config(DEFAULT_CONFIG).models["hiera3d"]["pose"]
    train_cfg = dataclasses.replace(run.train, gpus=1, allow_cpu=True, total_steps=3, save_every=3)
    with caplog.at_level(logging.INFO):
        log = train_run("hiera3d", "pose", dataclasses.replace(run, train=train_cfg), 0, pose_cache,
                        tmp_path / "run", monitor=MonitorConfig(log_every=1))
    assert log["step"].tolist() == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("models.hiera3d.pose.train.allow_cpu is true, so it trains on the CPU" in w for w in warnings)
    assert "training hiera3d/pose on cpu, fp32" in caplog.messages
    assert sum("hiera3d/pose step " in m for m in caplog.messages) == 3


def test_gpus_zero_is_the_cpu_even_where_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("r", "train.gpus", 0, False) == "cpu"
    assert resolve_device("r", "train.gpus", 2, False) == "cuda"
    with pytest.raises(GPUUnavailableError, match="train.gpus is 4 but torch"):
        resolve_device("r", "train.gpus", 4, False)
    assert resolve_device("r", "train.gpus", 4, True) == "cpu"
