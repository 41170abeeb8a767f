"""Which device a training job runs on, decided once at its start.

``gpus: 0`` (``train.gpus`` of a run, ``reg2rg.gpus``) means the CPU, also on a machine
with GPUs, so the demo behaves the same everywhere. ``gpus >= 1`` means CUDA, and a job
whose torch sees fewer GPUs than it asks for (a CPU-only torch build, no GPU allocated)
stops at once with a one-line message, unless the run sets ``allow_cpu: true``: then it
trains on the CPU and says so in its log.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

DeviceType = Literal["cpu", "cuda"]


class GPUUnavailableError(RuntimeError):
    """A job asks for more GPUs than torch sees."""


def visible_gpus() -> str:
    """What torch sees, for messages: e.g. ``torch 2.13.0+cpu (a CPU-only build) sees 0 GPUs``."""
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__} ({build}) sees {torch.cuda.device_count()} GPU(s)"


def resolve_device(run: str, key: str, gpus: int, allow_cpu: bool) -> DeviceType:
    """``cuda`` when ``gpus >= 1`` and torch sees that many GPUs, ``cpu`` when ``gpus == 0``.

    Args:
        run: the job, for messages (``hiera3d/pose``, ``reg2rg/demo``).
        key: config key of ``gpus`` (``models.hiera3d.pose.train.gpus``); ``allow_cpu`` is
            its sibling.
        gpus: GPUs the job asks for (its Snakemake ``gpu`` resource).
        allow_cpu: train on the CPU with a warning instead of failing.

    Raises:
        GPUUnavailableError: fewer GPUs visible than asked for and ``allow_cpu`` unset.
    """
    if gpus <= 0:
        return "cpu"
    if torch.cuda.device_count() >= gpus:
        return "cuda"
    allow_key = key.rsplit(".", 1)[0] + ".allow_cpu" if "." in key else "allow_cpu"
    if allow_cpu:
        log.warning("%s: %s is %d but %s; %s is true, so it trains on the CPU", run, key, gpus, visible_gpus(),
                    allow_key)
        return "cpu"
    raise GPUUnavailableError(
        f"{run}: {key} is {gpus} but {visible_gpus()}; install the CUDA build (make install TORCH=cuda), "
        f"or set {key}: 0 to train on the CPU, or {allow_key}: true to train on the CPU anyway")


def describe_device(device: torch.device, bf16: bool) -> str:
    """``cuda:0 (NVIDIA H200), bf16 autocast`` or ``cpu, fp32`` (for the run's log)."""
    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return f"{name}, {'bf16 autocast' if bf16 else 'fp32'}"
