"""Snakemake entry point of rule train_reg2rg: HF Trainer (optionally DeepSpeed) on the token cache.

With ``reg2rg.deepspeed`` set, or more than one GPU, the job launches ``python -m
strata.reg2rg`` under ``torchrun`` with one process per GPU of its ``gpu`` resource
(``reg2rg.gpus``; one process on the CPU, with ``DS_ACCELERATOR=cpu``): DeepSpeed needs
the launcher's RANK / WORLD_SIZE / MASTER_ADDR environment, and without DeepSpeed HF
Trainer runs DDP under it. A job asking for GPUs that torch does not see stops here,
before any work (unless ``reg2rg.allow_cpu``); ``gpu`` 0 trains on the CPU.
"""

from pathlib import Path

import torch

from strata.config import from_dict, to_dict
from strata.logging_setup import snakemake_logging
from strata.reg2rg.config import Reg2RGConfig
from strata.reg2rg.train import Reg2RGInputs, train_reg2rg
from strata.training.device import resolve_device
from strata.training.distributed import launch_run, threads_per_process
from strata.training.monitor import workflow_monitor

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(Reg2RGConfig, dict(snakemake.params.reg2rg), where="reg2rg")
    monitor = workflow_monitor(snakemake.config)
    gpus = int(snakemake.resources.get("gpu", 0))
    device = resolve_device(f"reg2rg/{cfg.run}", "reg2rg.gpus", gpus, cfg.allow_cpu)
    threads = threads_per_process(snakemake.threads, gpus)
    torch.set_num_threads(threads)
    token_dir = Path(snakemake.input.tokens[0]).parent
    run_dir = Path(snakemake.output.checkpoints).parent
    inputs = Reg2RGInputs(Path(snakemake.input.tokenizer), Path(snakemake.input.reports), token_dir,
                          tuple(Path(p).name.removesuffix(".safetensors") for p in snakemake.input.tokens))
    log.info("training reg2rg/%s on %d studies: asks for %d GPU(s), trains on %s, %d thread(s) per process",
             cfg.run, len(inputs.study_ids), gpus, device, threads)
    if cfg.deepspeed is None and gpus <= 1:
        frame = train_reg2rg(cfg, int(snakemake.params.seed), inputs, run_dir, gpus=gpus, monitor=monitor)
        log.info("first loss %.4f, last loss %.4f", frame["loss"].iloc[0], frame["loss"].iloc[-1])
    else:
        launch_run(max(gpus, 1), "strata.reg2rg", run_dir,
                   {"seed": int(snakemake.params.seed), "reg2rg": dict(snakemake.params.reg2rg),
                    "studies": list(inputs.study_ids), "monitor": to_dict(monitor)}, "--config",
                   ["--tokenizer", str(inputs.tokenizer_dir), "--reports", str(inputs.reports), "--tokens",
                    str(token_dir), "--out", str(run_dir), "--threads", str(threads), "--gpus", str(gpus)],
                   log_file=Path(snakemake.log[0]), env={} if device == "cuda" else {"DS_ACCELERATOR": "cpu"})
