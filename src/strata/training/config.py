"""Typed configuration of one training run (shared by every model the loop trains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: decay after warm-up (transformers' scheduler names).
        grad_clip: maximum global gradient norm (0 disables clipping).
    """

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    schedule: Literal["cosine", "linear", "constant_with_warmup"]
    grad_clip: float


@dataclass(frozen=True)
class TrainConfig:
    """How long to train and when to save (every checkpoint step is known in advance).

    Args:
        batch_size: samples per optimizer step (global, over all processes).
        total_steps: optimizer steps of the run.
        save_every: a checkpoint every this many steps (and at the last step).
        num_workers: DataLoader worker processes.
        precision: ``auto`` = bf16 autocast on CUDA, fp32 on CPU.
        optim: optimizer and schedule.
        gpus: devices of the run's job (its Snakemake ``gpu`` resource); more than one
            launches ``torchrun`` with one DDP process each. 0 = CPU, even where a GPU is.
        allow_cpu: train on the CPU (with a warning) when torch sees fewer than ``gpus``
            GPUs, instead of stopping the job (:func:`strata.training.device.resolve_device`).
    """

    batch_size: int
    total_steps: int
    save_every: int
    num_workers: int
    precision: Literal["auto", "fp32", "bf16"]
    optim: OptimConfig
    gpus: int = 0
    allow_cpu: bool = False

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"train.gpus must be >= 0, got {self.gpus}")
        if self.gpus > 1 and self.batch_size % self.gpus:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.gpus "
                             f"({self.gpus}): every process takes an equal share of the global batch")

    def checkpoint_steps(self) -> list[int]:
        """Steps after which a checkpoint is written (optimizer steps taken). Step 0 is the
        seeded random initialisation: every evaluation compares the trained checkpoints
        with it (the ``random_init`` baseline) and every curve starts there."""
        steps = [0, *range(self.save_every, self.total_steps + 1, self.save_every)]
        if steps[-1] != self.total_steps:
            steps.append(self.total_steps)
        return steps


@dataclass(frozen=True)
class MonitorConfig:
    """What a training run shows while it runs (top-level ``monitor:``; both the shared loop
    and Reg2RG). Never changes results, so it is no rule's params: editing it retrains nothing.

    Args:
        log_every: every this many optimizer steps a progress line in the rule's log, a row
            in the live step log ``<run dir>/live_log.parquet`` and TensorBoard scalars.
        tensorboard: also write TensorBoard event files to ``<run dir>/tensorboard/``.
    """

    log_every: int = 10
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"monitor.log_every must be >= 1, got {self.log_every}")
