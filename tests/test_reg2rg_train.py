"""Training Reg2RG with the HF Trainer on CPU: checkpoints, and learning on the demo data."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_reg2rg_support import REPO, demo_config

from strata.config import CTDataConfig, CTPreprocessConfig, DemoCTConfig, from_dict
from strata.ct.demo import write_demo_ct
from strata.ct.layout import demo_studies
from strata.ct.preprocess import run_preprocess_ct
from strata.ct.reports import run_preprocess_reports
from strata.logging_setup import snakemake_logging
from strata.models.reg2rg import build_encoders
from strata.reg2rg.dataset import Reg2RGCollator
from strata.reg2rg.token_cache import module_sha256, run_token_cache
from strata.reg2rg.tokenizer import build_tokenizer
from strata.reg2rg.train import Reg2RGInputs, build_training, mean_loss, train_reg2rg
from strata.training.config import MonitorConfig
from strata.training.monitor import LIVE_LOG, TENSORBOARD

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture


def test_checkpoint_per_epoch_holds_the_trainable_weights_and_provenance(tmp_path, fake_cache):
    cfg = demo_config(train__epochs=2, train__grad_accum=1, train__warmup_steps=1, train__repeats=1,
                      train__scheduler="constant_with_warmup")
    inputs = Reg2RGInputs(fake_cache["root"] / "tokenizer", fake_cache["reports"], fake_cache["tokens"],
                          tuple(fake_cache["ids"]))
    with snakemake_logging(tmp_path / "rule.log"):
        frame = train_reg2rg(cfg, 1234, inputs, tmp_path / "run", monitor=MonitorConfig(log_every=2, tensorboard=True))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]
    assert len(frame) == 2 * len(fake_cache["ids"]) and frame["loss"].notna().all()
    assert frame["lr"].iloc[0] < frame["lr"].iloc[-1] == pytest.approx(cfg.train.lr)  # constant after warm-up
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "2" / "model.safetensors"))
    _, model, _ = build_training(cfg, 1234, inputs, tmp_path / "other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(weights) == trainable
    meta = json.loads((tmp_path / "run" / "checkpoints" / "2" / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["step"] == 2 * len(fake_cache["ids"]) and meta["seed"] == 1234
    assert meta["config"]["train"]["lr"] == cfg.train.lr and set(meta["data_sha256"]) == set(fake_cache["ids"])
    assert not (tmp_path / "run" / "trainer").exists()  # resume state removed after a finished run
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "train_log.parquet"), frame)
    # the trained weights differ from the initial ones (something was learned)
    before = model.trainable_state_dict()
    assert any(not torch.equal(before[k], weights[k]) for k in weights)
    assert_watchable(tmp_path, frame, log_every=2)


def assert_watchable(tmp_path, frame: pd.DataFrame, log_every: int) -> None:
    """Live step log, TensorBoard scalars and progress lines every ``log_every`` steps (and the last)."""
    total = len(frame)
    cadence = sorted({*range(log_every, total + 1, log_every), total})
    live = pd.read_parquet(tmp_path / "run" / LIVE_LOG)
    assert live["step"].tolist() == cadence
    assert {"loss", "lr", "grad_norm", "epoch", "samples_per_s", "wall_time"} <= set(live.columns)
    assert live["loss"].tolist() == frame.set_index("step").loc[cadence, "loss"].tolist()
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == cadence
    assert [e.value for e in events.Scalars("train/samples_per_s")] == pytest.approx(live["samples_per_s"].tolist())
    lines = (tmp_path / "rule.log").read_text().splitlines()
    assert any("training reg2rg/demo on cpu, fp32" in line for line in lines)
    progress = [line for line in lines if "reg2rg/demo step " in line]
    assert len(progress) == len(cadence) and f"step {total}/{total} (100%) loss " in progress[-1]


def test_a_token_cache_from_other_encoders_is_refused(tmp_path, fake_cache):
    cfg = demo_config(encoder__vit__depth=1)
    inputs = Reg2RGInputs(fake_cache["root"] / "tokenizer", fake_cache["reports"], fake_cache["tokens"],
                          tuple(fake_cache["ids"]))
    with pytest.raises(ValueError, match="encoder hashes"):
        build_training(cfg, 1234, inputs, tmp_path / "run")


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory) -> Reg2RGInputs:
    """The real demo CT stages (writer, preprocessing, reports) and the Reg2RG stages before training."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    root = tmp_path_factory.mktemp("reg2rg_demo")
    data = from_dict(CTDataConfig, {**raw["data"]["ct"], "nifti_root": str(root / "ct"),
                                    "reports": str(root / "ct" / "reports.csv"), "dicom_root": str(root / "dicom"),
                                    "dicom_mask_root": str(root / "dicom_mask")})
    demo = from_dict(DemoCTConfig, raw["demo"]["ct"])
    ct = from_dict(CTPreprocessConfig, raw["preprocess"]["ct"])
    write_demo_ct(data, demo, raw["seed"])
    studies = demo_studies(data, demo, raw["seed"])
    cache = root / "cache"
    for s in studies:
        run_preprocess_ct(s.study_id, s.kind, list(s.files), dict(s.masks), ct, cache / "studies" / f"{s.study_id}.safetensors",
                          cache / "rows" / f"{s.study_id}.parquet")
    ids = sorted(s.study_id for s in studies)
    run_preprocess_reports(data.reports, ids, cache / "reports.parquet")
    cfg = demo_config()
    build_tokenizer(cfg.tokenizer, pd.read_parquet(cache / "reports.parquet"), cfg.perceiver.num_latents,
                    root / "tokenizer")
    encoders = build_encoders(cfg.encoder, raw["seed"])
    sha = module_sha256(encoders)
    for sid in ids:
        run_token_cache(encoders, sha, cache / "studies" / f"{sid}.safetensors", root / "tokens" / f"{sid}.safetensors",
                        torch.float32)
    return Reg2RGInputs(root / "tokenizer", cache / "reports.parquet", root / "tokens", tuple(ids))


@pytest.mark.slow  # ~1-3 min on 2 shared cores
def test_demo_training_learns_and_uses_the_image(tmp_path, demo_inputs):
    """After the demo schedule the loss is clearly below the first steps' and below the same
    model's with every visual token zeroed (region order shuffled here, unlike the demo: the
    area names and the findings are then only predictable from the image)."""
    cfg, seed = demo_config(data__shuffle_regions=True), 1234
    start = time.monotonic()
    frame = train_reg2rg(cfg, seed, demo_inputs, tmp_path / "run")
    elapsed = time.monotonic() - start
    _, model, dataset = build_training(cfg, seed, demo_inputs, tmp_path / "eval")
    dataset.set_epoch(10_000)  # region orders never seen in training
    collator = Reg2RGCollator(0)
    untrained = mean_loss(model, dataset, collator)
    model.load_state_dict(load_file(str(tmp_path / "run" / "checkpoints" / str(cfg.train.epochs) / "model.safetensors")),
                          strict=False)
    trained = mean_loss(model, dataset, collator)
    blind = mean_loss(model, dataset, collator, zero_visual=True)
    first, last = float(frame["loss"].iloc[0]), float(frame["loss"].iloc[-(len(frame) // cfg.train.epochs):].mean())
    print(f"reg2rg demo: {elapsed:.0f} s, first-step loss {first:.3f}, last-epoch loss {last:.3f}, "
          f"held-order loss untrained {untrained:.3f} / trained {trained:.3f} / visual tokens zeroed {blind:.3f}")
    assert last < first - 2.0
    assert trained < untrained - 2.0
    assert trained < blind - 1.0


# A real SIGKILL at a fixed point: after the Trainer saved its resume checkpoint of epoch 2
# (``on_save`` runs after the per-epoch DAG checkpoint and the Trainer checkpoint are written).
_KILLED_RUN = """
import os, signal, sys
from transformers import TrainerCallback
import strata.reg2rg.train as train

class KillAfterEpoch(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if round(state.epoch) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

build = train.build_training
def build_with_kill(*args, **kwargs):
    trainer, model, dataset = build(*args, **kwargs)
    trainer.add_callback(KillAfterEpoch())
    return trainer, model, dataset
train.build_training = build_with_kill

from strata.reg2rg.__main__ import main
main(sys.argv[1:])
"""


def test_a_killed_training_resumes_to_the_same_weights(tmp_path, fake_cache):
    """SIGKILL after epoch 2 of 3, re-run: the run resumes from the Trainer checkpoint
    (optimizer, scheduler, RNG) and ends with weights byte-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    from strata.config import to_dict

    cfg = demo_config(train__epochs=3, train__grad_accum=2, train__warmup_steps=1, train__repeats=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"seed": 1234, "reg2rg": to_dict(cfg), "monitor": {"log_every": 1}}))

    def run(out: str, script: list[str]) -> subprocess.CompletedProcess:
        args = ["--config", str(config), "--tokenizer", str(fake_cache["root"] / "tokenizer"),
                "--reports", str(fake_cache["reports"]), "--tokens", str(fake_cache["tokens"]),
                "--out", str(tmp_path / out)]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        return subprocess.run([sys.executable, *script, *args], env=env, capture_output=True, text=True, timeout=600, check=False)

    whole = run("whole", ["-m", "strata.reg2rg"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run("resumed", ["-c", _KILLED_RUN])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["1", "2"]
    assert any(p.name.startswith("checkpoint-") for p in (tmp_path / "resumed" / "trainer").iterdir())
    written = {e: (tmp_path / "resumed" / "checkpoints" / e / "model.safetensors").stat().st_mtime_ns for e in "12"}
    resumed = run("resumed", ["-m", "strata.reg2rg"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for epoch, mtime in written.items():  # epochs 1 and 2 were not trained again
        assert (tmp_path / "resumed" / "checkpoints" / epoch / "model.safetensors").stat().st_mtime_ns == mtime
    # the step log is whole (epochs 1-2 restored from the Trainer state) and equal to the uninterrupted one
    losses = [json.loads(r.stdout.strip().splitlines()[-1])["losses"] for r in (whole, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 3 * -(-len(fake_cache["ids"]) // 2)  # optimizer steps
    for epoch in ("1", "2", "3"):
        a = (tmp_path / "whole" / "checkpoints" / epoch / "model.safetensors").read_bytes()
        b = (tmp_path / "resumed" / "checkpoints" / epoch / "model.safetensors").read_bytes()
        assert a == b, f"epoch {epoch} weights differ after resume"
    assert not (tmp_path / "resumed" / "trainer").exists()
    # the live step log continues after the resume step: every step once, as in the uninterrupted run
    steps = [pd.read_parquet(tmp_path / run / LIVE_LOG)["step"].tolist() for run in ("whole", "resumed")]
    assert steps[0] == steps[1] == list(range(1, len(losses[0]) + 1))
