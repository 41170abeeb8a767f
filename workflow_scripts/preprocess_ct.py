"""Snakemake entry point of the preprocess_ct shard rules: each study -> cached tensors + manifest row."""

import time
from pathlib import Path

from strata.config import CTPreprocessConfig, from_dict
from strata.ct.layout import study_from_inputs
from strata.ct.preprocess import run_preprocess_ct
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(CTPreprocessConfig, dict(snakemake.params.ct), where="preprocess.ct")
    plan = list(snakemake.params.studies)
    for i, (study, tensors, row) in enumerate(zip(plan, snakemake.output.tensors, snakemake.output.rows), 1):
        start = time.perf_counter()
        kind, masks = study_from_inputs(list(study["files"]), list(study["masks"]))
        run_preprocess_ct(study["study"], kind, [Path(f) for f in study["files"]], masks, cfg, Path(tensors), Path(row))
        log.info("study %d/%d %s (%s, %d files, %d masks) in %.1f s", i, len(plan), study["study"], kind,
                 len(study["files"]), len(masks), time.perf_counter() - start)
