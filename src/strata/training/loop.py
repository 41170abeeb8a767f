"""The one training loop of the self-supervised and VAE models.

Seeded data order (a function of seed and step only, so a resumed run sees exactly the
batches an uninterrupted one would), AdamW with transformers' schedules, gradient
clipping, bf16 autocast on CUDA and fp32 on CPU, a progress bar, a per-step log and
checkpoints at the steps the config fixes. On CPU a killed and resumed run ends with
weights byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from transformers import get_scheduler

from strata.training.checkpoint import CheckpointStore, rng_state, set_rng_state
from strata.training.config import TrainConfig
from strata.training.interface import TrainableModel

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class StepSampler(Sampler[int]):
    """Sample indices for optimizer steps ``start..total-1``: epoch ``e`` is a permutation
    drawn from ``(seed, e)``, so the batch of a step never depends on earlier steps."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, total_steps: int) -> None:
        if n < batch_size:
            raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.total = start_step, total_steps
        self.steps_per_epoch = n // batch_size  # the last partial batch of an epoch is dropped

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.total):
            epoch, offset = divmod(step, self.steps_per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            yield from order[offset * self.batch_size:(offset + 1) * self.batch_size].tolist()


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs besides the model and data (recorded in every checkpoint)."""

    train: TrainConfig
    seed: int
    run_dir: Path
    meta: dict[str, Any]  # provenance (see checkpoint.run_meta); includes the config subset
    architecture: dict[str, Any]
    fingerprint: str  # config + data hash: a resume state must match it


def device_and_autocast(precision: str) -> tuple[torch.device, Callable[[], contextlib.AbstractContextManager]]:
    """bf16 autocast on CUDA (``auto``/``bf16``); fp32 everywhere else."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        if precision in ("auto", "bf16"):
            return device, lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return device, contextlib.nullcontext
    return torch.device("cpu"), contextlib.nullcontext


def parameter_groups(model: TrainableModel, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, other 1-D parameters and what the
    model lists in ``no_weight_decay()``."""
    trainable = {id(p) for p in model.trainable_parameters()}
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if id(param) in trainable:
            (decay if param.ndim >= 2 and name not in skip else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(model: TrainableModel, dataset: Dataset, spec: RunSpec,
          collate_fn: Callable[[list[Batch]], Batch] | None = None) -> pd.DataFrame:
    """Train ``model`` on ``dataset`` as ``spec`` says; resumes from ``run_dir/resume``.
    ``collate_fn`` batches items (default: stacking; variable-length items need their own).

    Returns the per-step log (also written to ``run_dir/train_log.parquet``).
    """
    cfg, optim_cfg = spec.train, spec.train.optim
    torch.manual_seed(spec.seed)
    device, autocast = device_and_autocast(cfg.precision)
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                                  betas=optim_cfg.betas)
    scheduler = get_scheduler(optim_cfg.schedule, optimizer, num_warmup_steps=optim_cfg.warmup_steps,
                              num_training_steps=cfg.total_steps)
    store = CheckpointStore(spec.run_dir, spec.fingerprint)
    start, rows = 0, []
    resumed = store.latest()
    if resumed is not None:
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.training["optimizer"])
        scheduler.load_state_dict(resumed.training["scheduler"])
        set_rng_state(resumed.training["rng"])
        start, rows = resumed.step, resumed.log.to_dict("records")
        log.info("resuming from step %d of %d", start, cfg.total_steps)
    save_steps = set(cfg.checkpoint_steps())
    sampler = StepSampler(len(dataset), cfg.batch_size, spec.seed, start, cfg.total_steps)
    # the loader draws its worker seed from its own generator, never from the global RNG
    # (that draw would shift the model's masking RNG on resume)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda", collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(spec.seed))
    model.train()
    progress = tqdm(total=cfg.total_steps, initial=start, desc=f"train {spec.run_dir}", unit="step")
    for step, batch in enumerate(loader, start=start):
        with autocast():
            out = model.training_step(_to_device(batch, device))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), optim_cfg.grad_clip)
                     if optim_cfg.grad_clip > 0 else torch.tensor(float("nan")))
        optimizer.step()
        scheduler.step()
        model.after_optimizer_step(step, cfg.total_steps)
        rows.append({"step": step + 1, "loss": float(out.loss.detach()), "lr": scheduler.get_last_lr()[0],
                     "grad_norm": float(grad_norm), **{k: float(v) for k, v in out.metrics.items()}})
        progress.update()
        progress.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
        if step + 1 in save_steps:
            training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), "step": step + 1}
            store.save(step + 1, model, training, spec.meta, pd.DataFrame(rows), spec.architecture)
    progress.close()
    frame = pd.DataFrame(rows)
    store.finish(frame)
    return frame
