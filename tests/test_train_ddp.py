"""Multi-process (DDP) training on the CPU: ``torchrun --nproc_per_node=2`` over gloo.

The 2-process run must follow the single-process run with the same global batch: same data
order (each rank takes its slice of the step's batch) and the same per-sample masks / noise
(drawn for the whole global batch from ``(seed, step)``). What remains is arithmetic:

* hiera3d: every sample has the same number of masked units, so the mean of the two ranks'
  local losses *is* the global loss; only float32 summation order differs (measured
  max relative loss difference 1.4e-7 over 6 steps) -> tolerance 1e-5.
* hjepa / posevae: their losses are ratios of sums whose denominators vary per sample
  (valid pyramid windows; observed keypoints and real chunks), so DDP's mean of per-rank
  ratios differs from the global ratio by the spread of those counts between the halves
  (measured 8.9e-5 and 2.5e-4 relative) -> tolerance 1e-3, still an order of magnitude
  below the loss change of one step, so a wrong slice or world-size-dependent masks fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import DEFAULT_CONFIG, copy_workflow, run_snakemake
from safetensors.torch import load_file
from torch import nn

from strata.training.checkpoint import LOG, META, STATE, WEIGHTS
from strata.training.distributed import DistInfo
from strata.training.loop import _check_replicas_agree

STEPS, SAVE_EVERY = 6, 3
TOLERANCE = {"hiera3d": 1e-5, "hjepa": 1e-3, "posevae": 1e-3}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for family in TOLERANCE:
        raw["models"][family]["pose"]["train"].update(total_steps=STEPS, save_every=SAVE_EVERY)
    path = tmp_path_factory.mktemp("ddp") / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, cache: Path, family: str, out: Path, nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "strata.training", "--config", str(config), "--family", family, "--run", "pose",
           "--cache", str(cache), "--out", str(out), "--threads", "1", "--nproc", str(nproc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def runs(config, pose_cache, tmp_path_factory):
    """Run folders by (family, nproc), trained once per module."""
    root, done = tmp_path_factory.mktemp("ddp_runs"), {}

    def get(family: str, nproc: int) -> Path:
        if (family, nproc) not in done:
            out = root / f"{family}-{nproc}"
            proc = train(config, pose_cache, family, out, nproc)
            done[family, nproc] = out
            if nproc > 1:  # two processes really trained, over gloo
                for rank in range(nproc):
                    assert f"DDP process {rank} of {nproc} on cpu (gloo)" in proc.stderr
        return done[family, nproc]

    return get


def relative_difference(a: pd.Series, b: pd.Series) -> float:
    return float(np.max(np.abs(a.to_numpy() - b.to_numpy()) / np.abs(a.to_numpy())))


@pytest.mark.parametrize("family", [
    "hiera3d",
    pytest.param("hjepa", marks=pytest.mark.slow),  # ~45 s each: two interpreters plus torchrun's
    pytest.param("posevae", marks=pytest.mark.slow),
])
def test_two_processes_follow_the_single_process_loss_curve(runs, family):
    single, double = runs(family, 1), runs(family, 2)
    a, b = pd.read_parquet(single / LOG), pd.read_parquet(double / LOG)
    assert a["step"].tolist() == b["step"].tolist() == list(range(1, STEPS + 1))
    assert relative_difference(a["loss"], b["loss"]) < TOLERANCE[family]
    # the tolerance separates runs: the loss moves by more than it within the first steps
    assert np.max(np.abs(np.diff(a["loss"].to_numpy()))) > 10 * TOLERANCE[family]
    wa, wb = load_file(str(single / "checkpoints" / str(STEPS) / WEIGHTS)), \
        load_file(str(double / "checkpoints" / str(STEPS) / WEIGHTS))
    assert wa.keys() == wb.keys()
    for name in wa:  # (for hjepa this includes the EMA target encoder)
        np.testing.assert_allclose(wb[name].float().numpy(), wa[name].float().numpy(), rtol=0,
                                   atol=1e-3 if family != "hiera3d" else 1e-4, err_msg=name)
    # rank 0 alone wrote the run folder: the same files as a single-process run, no leftovers
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == ["0", str(SAVE_EVERY), str(STEPS)]
    assert sorted(p.name for p in (double / "checkpoints" / str(STEPS)).iterdir()) == sorted([WEIGHTS, STATE, META])


def _replica_check(rank: int, world: int, port: int, results: Path) -> None:
    """One gloo process: equal weights pass the check, a bias that differs on rank 1 fails it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = nn.Linear(3, 2)
        with torch.no_grad():
            model.weight.fill_(0.25)
            model.bias.fill_(0.0)
        info = DistInfo(rank, world, 0)
        _check_replicas_agree(model, info, torch.device("cpu"), step=3)  # identical: passes
        with torch.no_grad():
            model.bias.add_(1e-6 * rank)  # as an EMA updated from rank-local data would drift
        try:
            _check_replicas_agree(model, info, torch.device("cpu"), step=6)
            outcome = "passed"
        except RuntimeError as err:
            outcome = str(err)
        (results / f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_replica_check_stops_on_weights_that_differ_between_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_replica_check, args=(2, port, tmp_path), nprocs=2, join=True, start_method="fork")
    for rank in range(2):  # every rank raises, naming the step and the tensor
        assert (tmp_path / f"rank{rank}.txt").read_text() == "step 6: model state differs between processes in ['bias']"


def test_two_process_run_resumes_to_identical_weights(runs, config, pose_cache, tmp_path):
    """An interrupted 2-process run (its resume state after step 3, as a killed job leaves
    it) resumed with 2 processes ends byte-identical to the uninterrupted 2-process run."""
    straight = runs("hiera3d", 2)
    resumed = tmp_path / "resumed"
    state = resumed / "resume" / str(SAVE_EVERY)
    state.mkdir(parents=True)
    for name in (WEIGHTS, STATE, META):
        shutil.copy2(straight / "checkpoints" / str(SAVE_EVERY) / name, state / name)
    pd.read_parquet(straight / LOG).iloc[:SAVE_EVERY].to_parquet(state / LOG)

    proc = train(config, pose_cache, "hiera3d", resumed, 2)
    assert f"resuming from step {SAVE_EVERY} of {STEPS}" in proc.stdout + proc.stderr
    for step in (SAVE_EVERY, STEPS):  # step 3 re-created from the resume state, step 6 trained
        assert ((straight / "checkpoints" / str(step) / WEIGHTS).read_bytes()
                == (resumed / "checkpoints" / str(step) / WEIGHTS).read_bytes()), step
    pd.testing.assert_frame_equal(pd.read_parquet(straight / LOG), pd.read_parquet(resumed / LOG))
    assert not (resumed / "resume").exists()


def test_rule_with_two_gpus_launches_torchrun(tmp_path):
    """train_hiera3d with ``train.gpus: 2`` and ``allow_cpu: true`` (no GPU here): the job's
    ``gpu`` resource is 2, its script says it trains on the CPU and launches two DDP
    processes (gloo), and the curve is the single-process one on the same cache.
    (Without ``allow_cpu`` the job stops at its start: test_train_monitor.py.)"""
    workdir = copy_workflow(tmp_path / "wf")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["models"]["hiera3d"]["pose"]["train"].update(total_steps=STEPS, save_every=SAVE_EVERY, gpus=2,
                                                     allow_cpu=True)
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(raw))
    target = "results/hiera3d/pose/train_log.parquet"
    plan = run_snakemake(workdir, target, "-n", "--cores", "2", "--configfile", "ddp.yaml")
    assert "gpu=2" in plan.stdout + plan.stderr
    run_snakemake(workdir, target, "--cores", "2", "--configfile", "ddp.yaml")
    rule_log = (workdir / "results" / "logs" / "train_hiera3d" / "pose.log").read_text()
    if torch.cuda.device_count() < 2:
        assert "models.hiera3d.pose.train.allow_cpu is true, so it trains on the CPU" in rule_log
        assert "asks for 2 GPU(s), trains on cpu" in rule_log
    assert "--nproc_per_node=2" in rule_log
    for rank in range(2):
        assert f"DDP process {rank} of 2 on cpu (gloo)" in rule_log
    assert not (workdir / "results" / "hiera3d" / "pose" / "launch_config.yaml").exists()

    single = tmp_path / "single"
    train(workdir / "ddp.yaml", workdir / "results" / "cache", "hiera3d", single, 1)
    a, b = pd.read_parquet(single / LOG), pd.read_parquet(workdir / target)
    assert relative_difference(a["loss"], b["loss"]) < TOLERANCE["hiera3d"]


@pytest.mark.slow  # CT demo preprocessing, token cache, DeepSpeed's first-use JIT builds (~6 min on busy 2 cores)
def test_reg2rg_rule_with_two_gpus_runs_zero2_in_two_processes(tmp_path):
    """train_reg2rg with ``reg2rg.gpus: 2`` and ZeRO-2: the job launches two DeepSpeed
    processes, which split the training studies (half the optimizer steps of one process)."""
    workdir = copy_workflow(tmp_path / "wf")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["reg2rg"].update(gpus=2, deepspeed="config/deepspeed/zero2.json", allow_cpu=True)
    raw["reg2rg"]["train"].update(epochs=1, grad_accum=1, warmup_steps=1, repeats=1)
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(raw))
    run = raw["reg2rg"]["run"]
    target = f"results/reg2rg/{run}/train_log.parquet"
    run_snakemake(workdir, target, "--cores", "2", "--configfile", "ddp.yaml", timeout=1500)
    rule_log = (workdir / "results" / "logs" / "train_reg2rg" / f"{run}.log").read_text()
    assert "--nproc_per_node=2" in rule_log and "deepspeed" in rule_log.lower()
    demo = raw["demo"]["ct"]
    trained = demo["n_nifti"] + demo["n_dicom"] - raw["reg2rg"]["split"]["held_out"]
    log = pd.read_parquet(workdir / target)
    assert len(log) == -(-trained // 2)  # per-device batch 1, two processes, held-out studies excluded
    assert (workdir / "results" / "reg2rg" / run / "checkpoints" / "1" / "model.safetensors").exists()
