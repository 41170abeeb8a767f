"""Snakemake entry point of rule generate: one checkpoint -> outputs.parquet (resumable)."""

from pathlib import Path

import torch

from strata.config import from_dict
from strata.evaluation.config import GenerationConfig
from strata.evaluation.generate import GenerateJob, generate
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    output = Path(snakemake.output[0])
    step = int(snakemake.wildcards.step)
    job = GenerateJob(
        family=snakemake.wildcards.family,
        data=snakemake.params.data,
        checkpoints=Path(snakemake.input.checkpoints),
        step=step,
        cache_dir=Path(snakemake.input.manifest).parent.parent,
        output=output,
        work_dir=output.parent.parent / f".work-{step}",  # survives a killed job (not an output)
        generation=from_dict(GenerationConfig, dict(snakemake.params.generation), where="evaluation.generation"),
        pose_test_sequences=int(snakemake.params.pose_test_sequences),
    )
    log.info("generate %s/%s step %d", job.family, snakemake.wildcards.run, step)
    generate(job)
