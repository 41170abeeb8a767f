"""Snakemake entry point of the train_<family> rules: one run -> checkpoints + step log."""

from pathlib import Path

import torch

from strata.config import ModelRunConfig, from_dict
from strata.logging_setup import snakemake_logging
from strata.training.run import train_run

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    family, run = snakemake.params.family, snakemake.wildcards.run
    cfg = from_dict(ModelRunConfig, dict(snakemake.params.run_config), where=f"models.{family}.{run}")
    torch.set_num_threads(snakemake.threads)
    log.info("training %s/%s on %s with %d threads", family, run, cfg.data, snakemake.threads)
    train_run(family, run, cfg, int(snakemake.params.seed), Path(snakemake.params.cache),
              Path(snakemake.output.checkpoints).parent)
