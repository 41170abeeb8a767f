"""The shared training loop: data order, checkpoints, resume, provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from strata.io.tensor_files import CacheIntegrityError
from strata.training.checkpoint import STATE, WEIGHTS, CheckpointStore
from strata.training.config import OptimConfig, TrainConfig
from strata.training.interface import StepOutput, TrainableModel
from strata.training.loop import RunSpec, StepSampler, train


class Interrupted(RuntimeError):
    pass


class TinyDenoiser(TrainableModel):
    """A real (small) model that uses the global RNG every step, as masking models do."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 8))
        self.fail_at = fail_at

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        x = batch["x"]
        keep = (torch.rand_like(x) > 0.3).float()
        loss = ((self.net(x * keep) - x) ** 2).mean()
        return StepOutput(loss, {"kept": float(keep.mean())})

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.fail_at is not None and step + 1 == self.fail_at:
            raise Interrupted(f"killed after step {step + 1}")


class Items(TensorDataset):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.tensors[0][i]}


def dataset() -> Items:
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 8, generator=g)
    return Items(torch.randn(200, 3, generator=g) @ basis)


def spec(run_dir: Path, fingerprint: str = "f1", total: int = 30) -> RunSpec:
    cfg = TrainConfig(batch_size=16, total_steps=total, save_every=10, num_workers=0, precision="auto",
                      optim=OptimConfig(lr=2e-2, weight_decay=0.01, betas=(0.9, 0.99), warmup_steps=3,
                                        schedule="cosine", grad_clip=1.0))
    return RunSpec(train=cfg, seed=7, run_dir=run_dir, meta={"config": {"x": 1}}, architecture={"width": 16},
                   fingerprint=fingerprint)


def fresh_model(fail_at: int | None = None) -> TinyDenoiser:
    torch.manual_seed(7)
    return TinyDenoiser(fail_at)


def test_step_sampler_batches_depend_only_on_seed_and_step():
    full = list(StepSampler(50, 8, seed=3, start_step=0, total_steps=20))
    tail = list(StepSampler(50, 8, seed=3, start_step=13, total_steps=20))
    assert full[13 * 8:] == tail
    first_epoch = full[: 6 * 8]  # 6 full batches per epoch of 50
    assert len(set(first_epoch)) == len(first_epoch)


def test_checkpoints_log_and_provenance(tmp_path):
    log = train(fresh_model(), dataset(), spec(tmp_path))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [0, 10, 20, 30]  # 0: the initialisation
    assert not (tmp_path / "resume").exists()
    assert log["step"].tolist() == list(range(1, 31))
    assert pd.read_parquet(tmp_path / "train_log.parquet").equals(log)
    assert log["loss"].iloc[-5:].mean() < 0.5 * log["loss"].iloc[:3].mean()
    meta = json.loads((tmp_path / "checkpoints" / "20" / "meta.json").read_text())
    assert meta["step"] == 20 and meta["config"] == {"x": 1}
    state = torch.load(tmp_path / "checkpoints" / "20" / STATE, weights_only=True)
    assert state["step"] == 20 and "optimizer" in state and "rng" in state


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    train(fresh_model(), dataset(), spec(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        train(fresh_model(fail_at=15), dataset(), spec(tmp_path / "resumed"))
    assert sorted(p.name for p in (tmp_path / "resumed" / "resume").iterdir()) == ["0", "10"]
    log = train(fresh_model(), dataset(), spec(tmp_path / "resumed"))
    assert log["step"].tolist() == list(range(1, 31))
    for step in (0, 10, 20, 30):
        a = (tmp_path / "straight" / "checkpoints" / str(step) / WEIGHTS).read_bytes()
        b = (tmp_path / "resumed" / "checkpoints" / str(step) / WEIGHTS).read_bytes()
        assert a == b, step
    straight = pd.read_parquet(tmp_path / "straight" / "train_log.parquet")
    pd.testing.assert_frame_equal(straight, log)


def test_resume_state_of_another_config_is_discarded(tmp_path):
    with pytest.raises(Interrupted):
        train(fresh_model(fail_at=12), dataset(), spec(tmp_path, fingerprint="old"))
    store = CheckpointStore(tmp_path, "new")
    assert store.latest() is None and not (tmp_path / "resume").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_resume_state_is_refused_naming_the_file_and_the_remedy(tmp_path, damage):
    with pytest.raises(Interrupted):
        train(fresh_model(fail_at=15), dataset(), spec(tmp_path))
    state = tmp_path / "resume" / "10" / STATE
    data = bytearray(state.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    state.write_bytes(bytes(data))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(CacheIntegrityError, match=rf"{state}.*SHA-256.*rule train.*delete {tmp_path / 'resume'}"):
        train(fresh_model(), dataset(), spec(tmp_path))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_resumed_run_restores_the_checkpoints_its_rerun_deleted(tmp_path):
    """Snakemake deletes a job's declared outputs (``checkpoints/``) before re-running it;
    the resumed run must still end with every checkpoint, equal to an uninterrupted run's."""
    train(fresh_model(), dataset(), spec(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        train(fresh_model(fail_at=25), dataset(), spec(tmp_path / "resumed"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints")  # what Snakemake does before the retry
    train(fresh_model(), dataset(), spec(tmp_path / "resumed"))
    assert sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [0, 10, 20, 30]
    for step in (0, 10, 20, 30):
        for name in (WEIGHTS, "meta.json"):
            a = (tmp_path / "straight" / "checkpoints" / str(step) / name).read_bytes()
            assert a == (tmp_path / "resumed" / "checkpoints" / str(step) / name).read_bytes(), (step, name)
