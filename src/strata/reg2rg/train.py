"""Training stage ``train_reg2rg``: Hugging Face ``Trainer`` on the token cache (docs/design.md §4.4, §7).

Hyper-parameters come from ``reg2rg.train`` (full config: lr 5e-5, constant_with_warmup
with 20 warm-up steps, weight decay 0, per-device batch 1, gradient accumulation 8, 10
epochs, bf16 when a GPU is there) and ``reg2rg.deepspeed`` (ZeRO-2 JSON). No online
evaluation. After every epoch rank 0 writes the checkpoint the DAG knows::

    results/reg2rg/<run>/checkpoints/<epoch>/model.safetensors   trainable weights only
    results/reg2rg/<run>/checkpoints/<epoch>/meta.json           config, seed, data hashes, versions, step
    results/reg2rg/<run>/train_log.parquet                       one row per optimizer step

The Trainer's own resume checkpoints (optimizer, scheduler, RNG; trainable weights only
for the plain Trainer) live in ``results/reg2rg/<run>/trainer/``, which is not a declared
output: a re-run after a kill resumes from there, a finished run deletes it.

The device follows ``reg2rg.gpus`` (:func:`strata.training.device.resolve_device`: 0 = CPU,
too few visible GPUs stop the run unless ``reg2rg.allow_cpu``). While it runs,
:class:`MonitorCallback` gives the shared loop's view (:mod:`strata.training.monitor`):
every ``monitor.log_every`` steps a progress line in the log, a row in
``results/reg2rg/<run>/live_log.parquet`` and, with ``monitor.tensorboard``, TensorBoard
scalars in ``results/reg2rg/<run>/tensorboard/``; tqdm's bar goes to a terminal's stderr.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from strata.config import config_sha256, to_dict
from strata.io.atomic import atomic_dir, write_parquet
from strata.io.tensor_files import load_tensors, save_tensors
from strata.models.reg2rg.model import Reg2RG, build_encoders, build_reg2rg
from strata.reg2rg.config import Reg2RGConfig
from strata.reg2rg.dataset import Reg2RGCollator, Reg2RGDataset, TokenCacheSource, study_sentences
from strata.reg2rg.token_cache import check_cache, module_sha256
from strata.reg2rg.tokenizer import load_tokenizer
from strata.training.checkpoint import META, WEIGHTS, run_meta
from strata.training.config import MonitorConfig
from strata.training.device import DeviceType, describe_device, resolve_device
from strata.training.monitor import StepMonitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reg2RGInputs:
    """Where training reads from.

    Args:
        tokenizer_dir: output of rule ``reg2rg_tokenizer``.
        reports: ``results/cache/ct/reports.parquet``.
        token_dir: output folder of rule ``reg2rg_token_cache``.
        study_ids: studies to train on.
    """

    tokenizer_dir: Path
    reports: Path
    token_dir: Path
    study_ids: tuple[str, ...]


def use_bf16(cfg: Reg2RGConfig, device_type: DeviceType) -> bool:
    """bf16 on CUDA with precision ``auto`` or ``bf16``; fp32 on the CPU."""
    return device_type == "cuda" and cfg.train.precision in ("auto", "bf16")


class Reg2RGTrainer(Trainer):
    """``Trainer`` whose resume checkpoints hold the trainable weights only (not the frozen LLM)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save:
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            save_tensors(model.trainable_state_dict(), out / WEIGHTS, written_by="train_reg2rg")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Resume the trainable weights written by :meth:`_save` (the frozen LLM comes from its own source).

        The stock loader would load them non-strictly and then trip over the missing frozen keys.
        """
        path = Path(resume_from_checkpoint) / WEIGHTS
        self.accelerator.unwrap_model(model or self.model).load_trainable_state_dict(load_tensors(str(path)), str(path))


class EpochCallback(TrainerCallback):
    """Per-epoch region shuffling and the per-epoch checkpoints of the DAG."""

    def __init__(self, dataset: Reg2RGDataset, model: Reg2RG, run_dir: Path, meta: dict[str, Any]) -> None:
        self.dataset, self.model, self.run_dir, self.meta = dataset, model, run_dir, meta

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(round(state.epoch or 0))

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch)
        if state.is_world_process_zero:
            write_checkpoint(self.run_dir / "checkpoints" / str(epoch), self.model,
                             {**self.meta, "epoch": epoch, "step": state.global_step})


class MonitorCallback(TrainerCallback):
    """Sends the Trainer's per-step log dicts to a :class:`StepMonitor` (progress lines in
    the Python log, the live step log, TensorBoard) every ``monitor.log_every`` steps."""

    def __init__(self, cfg: MonitorConfig, run_dir: Path, name: str) -> None:
        self.cfg, self.run_dir, self.name = cfg, run_dir, name
        self.monitor: StepMonitor | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        samples = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.monitor = StepMonitor(self.cfg, self.run_dir, self.name, state.max_steps, state.global_step, samples,
                                   enabled=state.is_world_process_zero)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs and "loss" in logs:
            scalars = {"loss": logs["loss"], "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                       "epoch": logs.get("epoch")}
            self.monitor.step(state.global_step, {k: float(v) for k, v in scalars.items() if v is not None})

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()


class ProgressBar(ProgressCallback):
    """HF's tqdm bar without its copy of every log dict on stdout (:class:`MonitorCallback` logs them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def write_checkpoint(path: Path, model: Reg2RG, meta: dict[str, Any]) -> None:
    with atomic_dir(path) as tmp:
        save_tensors(model.trainable_state_dict(), tmp / WEIGHTS, metadata={"epoch": meta["epoch"]},
                     written_by="train_reg2rg")
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def training_arguments(cfg: Reg2RGConfig, seed: int, output_dir: Path, max_steps: int = -1,
                       device_type: DeviceType = "cpu") -> TrainingArguments:
    """The Trainer's arguments. ``logging_steps=1``: ``train_log.parquet`` holds every optimizer
    step's loss; the ``monitor.log_every`` cadence (progress lines, live log, TensorBoard through
    :class:`MonitorCallback`, so the same files and tags as the shared loop) applies on top of it."""
    t = cfg.train
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, num_train_epochs=t.epochs, max_steps=max_steps,
        learning_rate=t.lr, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim="adamw_torch",
        bf16=use_bf16(cfg, device_type), use_cpu=device_type == "cpu", seed=seed, data_seed=seed,
        eval_strategy="no", save_strategy="epoch", save_total_limit=1, logging_steps=1,
        report_to=[], disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=t.num_workers,
        remove_unused_columns=False, deepspeed=str(cfg.deepspeed) if cfg.deepspeed is not None else None,
    )


def build_training(cfg: Reg2RGConfig, seed: int, inputs: Reg2RGInputs, run_dir: Path, max_steps: int = -1, *,
                   gpus: int | None = None, monitor: MonitorConfig | None = None
                   ) -> tuple[Reg2RGTrainer, Reg2RG, Reg2RGDataset]:
    """Tokenizer, dataset, model and the ``Trainer`` (nothing is trained yet).

    ``gpus``: GPUs the job asks for (default ``reg2rg.gpus``); see :func:`resolve_device`.
    """
    device_type = resolve_device(f"reg2rg/{cfg.run}", "reg2rg.gpus", cfg.gpus if gpus is None else gpus,
                                 cfg.allow_cpu)
    tokenizer, layout = load_tokenizer(inputs.tokenizer_dir, cfg.perceiver.num_latents)
    token_files = [inputs.token_dir / f"{s}.safetensors" for s in inputs.study_ids]
    encoder_sha = module_sha256(build_encoders(cfg.encoder, seed, None)) if cfg.checkpoint is None else None
    data_hashes = check_cache(token_files, encoder_sha)
    dataset = Reg2RGDataset(study_ids=list(inputs.study_ids), sentences=study_sentences(pd.read_parquet(inputs.reports)),
                            source=TokenCacheSource(inputs.token_dir), tokenizer=tokenizer, layout=layout,
                            cfg=cfg.data, seed=seed, train=True, repeats=cfg.train.repeats)
    model = build_reg2rg(cfg, layout, seed, with_encoders=False,
                         dtype=torch.bfloat16 if use_bf16(cfg, device_type) and cfg.llm.pretrained is not None
                         else torch.float32)
    meta = {**run_meta(to_dict(cfg), seed, data_hashes, device_type), "config_sha256": config_sha256(cfg),
            "trainable": sorted(model.trainable_state_dict())}
    args = training_arguments(cfg, seed, run_dir / "trainer", max_steps, device_type)
    trainer = Reg2RGTrainer(model=model, args=args, train_dataset=dataset,
                            data_collator=Reg2RGCollator(tokenizer.pad_token_id),
                            callbacks=[EpochCallback(dataset, model, run_dir, meta),
                                       MonitorCallback(monitor or MonitorConfig(), run_dir, f"reg2rg/{cfg.run}")])
    trainer.remove_callback(PrinterCallback)  # would print every log dict to stdout
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBar())
    if trainer.is_world_process_zero():
        log.info("training reg2rg/%s on %s", cfg.run, describe_device(args.device, args.bf16))
    return trainer, model, dataset


def step_log(trainer: Trainer) -> pd.DataFrame:
    rows = [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"], "lr": h.get("learning_rate"),
             "grad_norm": h.get("grad_norm")} for h in trainer.state.log_history if "loss" in h]
    return pd.DataFrame(rows, columns=["step", "epoch", "loss", "lr", "grad_norm"])


def train_reg2rg(cfg: Reg2RGConfig, seed: int, inputs: Reg2RGInputs, run_dir: Path, *, gpus: int | None = None,
                 monitor: MonitorConfig | None = None) -> pd.DataFrame:
    """Train one run; checkpoints per epoch, the step log, resume from ``trainer/`` if present."""
    trainer, _, _ = build_training(cfg, seed, inputs, run_dir, gpus=gpus, monitor=monitor)
    resume_dir = run_dir / "trainer"
    resume = resume_dir.is_dir() and any(p.name.startswith("checkpoint-") for p in resume_dir.iterdir())
    trainer.train(resume_from_checkpoint=True if resume else None)
    frame = step_log(trainer)
    if trainer.is_world_process_zero():
        write_parquet(frame, run_dir / "train_log.parquet")
        shutil.rmtree(resume_dir, ignore_errors=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return frame


@torch.no_grad()
def mean_loss(model: Reg2RG, dataset: Reg2RGDataset, collator: Reg2RGCollator, *, zero_visual: bool = False) -> float:
    """Token-weighted mean loss over ``dataset`` in eval mode (``zero_visual``: image control)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(len(dataset)):
            batch = collator([dataset[i]])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch, zero_visual=zero_visual)["loss"]) * n
            count += n
    finally:
        model.train(was)
    return total / count
