"""Multi-process (multi-GPU) training: the process group of one run and the ``torchrun`` launch.

A run that asks for N > 1 GPUs is one Snakemake job owning N devices; its entry point
re-launches the training module under ``python -m torch.distributed.run --standalone
--nproc_per_node=N`` (``torchrun``), which gives each process RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT. The backend is NCCL on CUDA and gloo on the CPU
(how the multi-process path is tested on a machine without GPUs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
import yaml


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size``, device ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextlib.contextmanager
def process_group(use_cuda: bool = False) -> Iterator[DistInfo]:
    """Join the run's process group when started by ``torchrun`` with WORLD_SIZE > 1
    (NCCL on CUDA with ``use_cuda``, gloo on the CPU) and leave it on exit; a single
    process gets rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or not launched_by_torchrun():
        yield DistInfo()
        return
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield info
    finally:
        if owner:
            dist.destroy_process_group()


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m module args``.

    ``--standalone`` lets torchrun pick a free port on this node, so several multi-GPU jobs
    on one node never collide on MASTER_PORT.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def run_torchrun(nproc: int, module: str, args: Sequence[str], log_file: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
    """Run ``module`` in ``nproc`` processes; their output is appended to ``log_file``
    (or goes to this process's stdout / stderr).

    When this process logs to ``log_file`` already (a rule's log), the processes write
    through that handler's open file, so its offset is shared and a traceback logged
    afterwards lands after their output instead of over it.
    Raises ``subprocess.CalledProcessError`` when any process fails (torchrun stops the others).
    """
    cmd = torchrun_command(nproc, module, args)
    full_env = {**os.environ, **(env or {})}
    if log_file is None:
        subprocess.run(cmd, env=full_env, check=True)
        return
    logging.getLogger(__name__).info("launching %s", " ".join(cmd))
    stream = _logging_stream(log_file)
    with contextlib.ExitStack() as stack:
        out = stream if stream is not None else stack.enter_context(open(log_file, "a"))
        subprocess.run(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, check=True)


def launch_run(nproc: int, module: str, run_dir: Path, launch_config: dict, config_flag: str,
               args: Sequence[str], log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run a training ``module`` under torchrun with its config in a file: ``launch_config``
    is written to ``run_dir/launch_config.yaml``, passed as ``config_flag <file>`` before
    ``args``, and removed after a successful run (a failed run keeps it, to reproduce)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "launch_config.yaml"
    config.write_text(yaml.safe_dump(launch_config))
    run_torchrun(nproc, module, [config_flag, str(config), *args], log_file=log_file, env=env)
    config.unlink()


def _logging_stream(log_file: Path) -> IO[str] | None:
    """The flushed stream of a root logging handler writing to ``log_file``, if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == Path(log_file).resolve():
            handler.flush()
            return handler.stream
    return None


def threads_per_process(threads: int, nproc: int) -> int:
    """The job's CPU threads shared among its processes (at least one each)."""
    return max(1, threads // max(nproc, 1))
