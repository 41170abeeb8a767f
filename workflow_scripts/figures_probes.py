"""Snakemake entry point of rule figures_probes: per-level probe scores against baselines."""

from pathlib import Path

import pandas as pd

from strata.config import from_dict
from strata.evaluation.config import BestCheckpoint
from strata.evaluation.summary import best_checkpoints, wide_table
from strata.figures.probes import probe_figure
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    family, run = snakemake.wildcards.family, snakemake.wildcards.run
    long = pd.concat([pd.read_parquet(p) for p in snakemake.input.metrics], ignore_index=True)
    rule = from_dict(BestCheckpoint, dict(snakemake.params.best), where=f"evaluation.best_checkpoint.{family}")
    step = int(best_checkpoints(wide_table(long), {family: rule})["step"].iloc[0])
    probe_figure(long, step, f"{family}/{run}: probes per level at checkpoint {step}", Path(snakemake.output.probes))
    log.info("probe figure of %s/%s at checkpoint %d", family, run, step)
