"""The one training loop of the self-supervised and VAE models.

Seeded data order (a function of seed and step only, so a resumed run sees exactly the
batches an uninterrupted one would), AdamW with transformers' schedules, gradient
clipping, bf16 autocast on CUDA and fp32 on CPU (the device is the run's decision,
:func:`strata.training.device.resolve_device`, never a guess here), a progress bar on a
terminal's stderr, progress lines / a live step log / TensorBoard scalars every
``monitor.log_every`` steps (:mod:`strata.training.monitor`), a per-step log and
checkpoints at the steps the config fixes. On CPU a killed and resumed run ends with
weights byte-identical to an uninterrupted one.

Several processes (``torchrun``, one per GPU; gloo on the CPU) run the same loop under
DistributedDataParallel: the sampler still draws the *global* batch of each step from
``(seed, step)`` and every rank takes its contiguous slice, so the data order is the
single-process run's. Per-sample randomness (masks, latent noise) is drawn by the model's
``step_inputs`` for the whole global batch from a generator seeded with ``(seed, step)``
and sliced the same way, so it does not depend on the number of processes either; the
global torch RNG (dropout and any other draw inside the model) is reseeded every step
from ``(seed, step, rank)``. Gradients are averaged by DDP (the mean of the ranks' local
means equals the global-batch mean whenever a loss weighs every sample equally); the
logged loss and metrics are the mean over ranks; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from transformers import get_scheduler

from strata.training.checkpoint import CheckpointStore, rng_state, set_rng_state
from strata.training.config import MonitorConfig, TrainConfig
from strata.training.device import DeviceType, describe_device
from strata.training.distributed import DistInfo, process_group
from strata.training.interface import TrainableModel
from strata.training.monitor import StepMonitor

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class StepSampler(Sampler[int]):
    """Sample indices for optimizer steps ``start..total-1``: epoch ``e`` is a permutation
    drawn from ``(seed, e)``, so the batch of a step never depends on earlier steps.

    ``batch_size`` is the global batch; process ``rank`` of ``world_size`` gets the
    contiguous slice ``[rank * b, (rank + 1) * b)`` of it (``b = batch_size / world_size``),
    so the ranks together see exactly the single-process batch (DistributedSampler's role,
    with the step-seeded order kept).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size:
            raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"batch size {batch_size} must split evenly over {world_size} processes "
                             f"(rank {rank})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.total = start_step, total_steps
        self.local_batch = batch_size // world_size
        self.rank_offset = rank * self.local_batch
        self.steps_per_epoch = n // batch_size  # the last partial batch of an epoch is dropped

    def __len__(self) -> int:
        return (self.total - self.start) * self.local_batch

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.total):
            epoch, offset = divmod(step, self.steps_per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            first = offset * self.batch_size + self.rank_offset
            yield from order[first:first + self.local_batch].tolist()


def step_seed(*key: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, step)`` or ``(seed, step, rank)``)."""
    low, high = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


class _TrainingStep(nn.Module):
    """Routes DDP's forward to :meth:`TrainableModel.training_step` (DDP synchronises the
    gradients of what runs inside its own ``forward``)."""

    def __init__(self, model: TrainableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model.training_step(batch)
        return out.loss, out.metrics


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs besides the model and data (recorded in every checkpoint)."""

    train: TrainConfig
    seed: int
    run_dir: Path
    meta: dict[str, Any]  # provenance (see checkpoint.run_meta); includes the config subset
    architecture: dict[str, Any]
    fingerprint: str  # config + data hash: a resume state must match it
    name: str = ""  # the run in log lines (``hiera3d/pose``); default: run_dir
    device_type: DeviceType = "cpu"  # resolve_device's decision; cuda = device cuda:<local rank>
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # not in the fingerprint: never changes results


def uses_bf16(precision: str, device_type: DeviceType) -> bool:
    """bf16 autocast on CUDA with precision ``auto`` or ``bf16``; fp32 on the CPU."""
    return device_type == "cuda" and precision in ("auto", "bf16")


def device_and_autocast(precision: str, device_type: DeviceType = "cpu", local_rank: int = 0
                        ) -> tuple[torch.device, Callable[[], contextlib.AbstractContextManager]]:
    """The device (``cuda:<local_rank>`` or ``cpu``) and its autocast (bf16 on CUDA, see :func:`uses_bf16`)."""
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        if uses_bf16(precision, device_type):
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


def _mean_over_ranks(values: list[float], dist_info: DistInfo, device: torch.device) -> list[float]:
    """The mean of each value over the processes (the values themselves in a single process)."""
    if dist_info.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist_info.world_size).tolist()


def _check_replicas_agree(model: nn.Module, dist_info: DistInfo, device: torch.device, step: int) -> None:
    """Fail loudly if the processes' weights drifted apart (e.g. an EMA target encoder
    or a buffer updated from rank-local data): checksums of every tensor must be equal."""
    if dist_info.world_size == 1:
        return
    sums = torch.stack([t.detach().double().sum() for t in model.state_dict().values()]).to(device)
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        names = [n for n, h, lo in zip(model.state_dict(), high.tolist(), low.tolist()) if h != lo]
        raise RuntimeError(f"step {step}: model state differs between processes in {names[:5]}")


def train(model: TrainableModel, dataset: Dataset, spec: RunSpec,
          collate_fn: Callable[[list[Batch]], Batch] | None = None) -> pd.DataFrame:
    """Train ``model`` on ``dataset`` as ``spec`` says; resumes from ``run_dir/resume``.
    ``collate_fn`` batches items (default: stacking; variable-length items need their own).

    Under ``torchrun`` (WORLD_SIZE > 1) this process joins the run's process group and
    trains its share of every global batch with DDP.

    Returns the per-step log (also written to ``run_dir/train_log.parquet``).
    """
    with process_group(spec.device_type == "cuda") as dist_info:
        return _train(model, dataset, spec, collate_fn, dist_info)


def _train(model: TrainableModel, dataset: Dataset, spec: RunSpec,
           collate_fn: Callable[[list[Batch]], Batch] | None, dist_info: DistInfo) -> pd.DataFrame:
    cfg, optim_cfg = spec.train, spec.train.optim
    world, rank = dist_info.world_size, dist_info.rank
    torch.manual_seed(spec.seed)
    device, autocast = device_and_autocast(cfg.precision, spec.device_type, dist_info.local_rank)
    name = spec.name or str(spec.run_dir)
    if dist_info.is_main:
        log.info("training %s on %s", name, describe_device(device, uses_bf16(cfg.precision, spec.device_type)))
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                                  betas=optim_cfg.betas)
    scheduler = get_scheduler(optim_cfg.schedule, optimizer, num_warmup_steps=optim_cfg.warmup_steps,
                              num_training_steps=cfg.total_steps)
    store = CheckpointStore(spec.run_dir, spec.fingerprint)
    start, rows = 0, []
    # rank 0 looks first: it alone may discard a stale resume state the others must not read
    resumed = store.latest() if dist_info.is_main else None
    dist_info.barrier()
    if not dist_info.is_main:
        resumed = store.latest()
    if resumed is not None:
        if dist_info.is_main:
            store.restore_checkpoints(resumed.step)
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.training["optimizer"])
        scheduler.load_state_dict(resumed.training["scheduler"])
        set_rng_state(resumed.training["rng"])
        start, rows = resumed.step, resumed.log.to_dict("records")
        log.info("resuming from step %d of %d", start, cfg.total_steps)
    save_steps = set(cfg.checkpoint_steps())
    sampler = StepSampler(len(dataset), cfg.batch_size, spec.seed, start, cfg.total_steps, rank, world)
    local = sampler.local_batch
    # the loader draws its worker seed from its own generator, never from the global RNG
    loader = DataLoader(dataset, batch_size=local, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda", collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(spec.seed))
    model.train()
    step_fn: nn.Module = _TrainingStep(model)
    if world > 1:  # broadcasts rank 0's weights, then all-reduces (averages) gradients in backward;
        # some models own parameters a training step never uses (hiera3d's projections of
        # the earlier stages serve only feature extraction), which DDP must be told to expect
        step_fn = DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)
        log.info("DDP process %d of %d on %s (%s), %d of %d samples per step", rank, world, device,
                 dist.get_backend(), local, cfg.batch_size)
    # the bar only on a terminal (disable=None): progress lines go to the log through the monitor
    progress = tqdm(total=cfg.total_steps, initial=start, desc=f"train {name}", unit="step",
                    disable=None if dist_info.is_main else True)
    monitor = StepMonitor(spec.monitor, spec.run_dir, name, cfg.total_steps, start, cfg.batch_size,
                          enabled=dist_info.is_main)

    def save(step: int) -> None:
        _check_replicas_agree(model, dist_info, device, step)
        if dist_info.is_main:
            training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), "step": step}
            store.save(step, model, training, spec.meta, pd.DataFrame(rows), spec.architecture)

    if start == 0 and 0 in save_steps:
        save(0)  # the seeded random initialisation, the baseline every checkpoint is compared with
    try:
        for step, batch in enumerate(loader, start=start):
            batch = _to_device(batch, device)
            # per-sample randomness of the whole global batch from (seed, step); this rank's slice
            shared = torch.Generator().manual_seed(step_seed(spec.seed, step))
            for key, value in model.step_inputs(cfg.batch_size, shared).items():
                batch[key] = value[rank * local:(rank + 1) * local].to(device)
            torch.manual_seed(step_seed(spec.seed, step, rank))  # any other draw (dropout) of this step
            with autocast():
                loss, metrics = step_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), optim_cfg.grad_clip)
                         if optim_cfg.grad_clip > 0 else torch.tensor(float("nan")))
            optimizer.step()
            scheduler.step()
            model.after_optimizer_step(step, cfg.total_steps)
            names = list(metrics)
            values = _mean_over_ranks([float(loss.detach()), *(float(metrics[k]) for k in names)], dist_info, device)
            rows.append({"step": step + 1, "loss": values[0], "lr": scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm), **dict(zip(names, values[1:]))})
            progress.update()
            progress.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            monitor.step(step + 1, {k: v for k, v in rows[-1].items() if k != "step"})
            if step + 1 in save_steps:
                save(step + 1)
    finally:
        progress.close()
        monitor.close()
    frame = pd.DataFrame(rows)
    if dist_info.is_main:
        store.finish(frame)
    dist_info.barrier()  # no process leaves before the run's files are complete
    return frame
