"""Snakemake entry point of rule generate: one checkpoint -> outputs.parquet (resumable)."""

from pathlib import Path

import torch

from strata.config import from_dict
from strata.evaluation.config import GenerationConfig
from strata.evaluation.generate import GenerateJob, generate
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive


def reg2rg_sources(smk):
    """Reg2RG jobs only (its modules load peft / transformers: ~6 s of CPU per process)."""
    from strata.evaluation.reg2rg import Reg2RGSources
    from strata.reg2rg.config import GenerationConfig as Reg2RGGeneration

    params = smk.params.reg2rg
    return Reg2RGSources(
        tokenizer_dir=Path(smk.input.tokenizer),
        token_dir=Path(smk.input.tokens[0]).parent,
        reports=Path(smk.input.reports),
        study_ids=tuple(params["studies"]),
        generation=from_dict(Reg2RGGeneration, dict(params["decoding"]), where="reg2rg.generation"),
    )


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
        reg2rg=reg2rg_sources(snakemake) if snakemake.wildcards.family == "reg2rg" else None,
    )
    # generation runs on the CPU (models are loaded there); the job's `gpu` resource only
    # follows its run's train.gpus / reg2rg.gpus for the scheduler
    log.info("generate %s/%s step %d on cpu (%d thread(s))", job.family, snakemake.wildcards.run, step,
             snakemake.threads)
    generate(job)
