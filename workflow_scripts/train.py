"""Snakemake entry point of the train_<family> rules: one run -> checkpoints + step log.

The job's ``gpu`` resource (the run's ``train.gpus``) is its world size: more than one
launches ``python -m strata.training`` under ``torchrun`` with one DDP process per GPU.
A job asking for GPUs that torch does not see stops here, before any work (unless the
run's ``train.allow_cpu``); ``gpu`` 0 trains on the CPU.
"""

from pathlib import Path

import torch

from strata.config import ModelRunConfig, from_dict, to_dict
from strata.logging_setup import snakemake_logging
from strata.training.device import resolve_device
from strata.training.distributed import launch_run, threads_per_process
from strata.training.monitor import workflow_monitor
from strata.training.run import train_run

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    family, run = snakemake.params.family, snakemake.wildcards.run
    cfg = from_dict(ModelRunConfig, dict(snakemake.params.run_config), where=f"models.{family}.{run}")
    monitor = workflow_monitor(snakemake.config)
    run_dir = Path(snakemake.output.checkpoints).parent
    nproc = int(snakemake.resources.get("gpu", 0))
    device = resolve_device(f"{family}/{run}", f"models.{family}.{run}.train.gpus", nproc, cfg.train.allow_cpu)
    threads = threads_per_process(snakemake.threads, nproc)
    log.info("training %s/%s on %s: asks for %d GPU(s), trains on %s, %d thread(s) per process",
             family, run, cfg.data, nproc, device, threads)
    if nproc > 1:
        launch_run(nproc, "strata.training", run_dir,
                   {"seed": int(snakemake.params.seed), "run_config": dict(snakemake.params.run_config),
                    "monitor": to_dict(monitor)}, "--run-config",
                   ["--family", family, "--run-name", run, "--gpus", str(nproc), "--cache",
                    str(snakemake.params.cache), "--out", str(run_dir), "--threads", str(threads)],
                   log_file=Path(snakemake.log[0]))
    else:
        torch.set_num_threads(threads)
        train_run(family, run, cfg, int(snakemake.params.seed), Path(snakemake.params.cache), run_dir,
                  gpus=nproc, monitor=monitor)
