"""Snakemake entry point of rule preprocess_ct: one study -> cached tensors + manifest row."""

from pathlib import Path

from strata.config import CTPreprocessConfig, from_dict
from strata.ct.layout import study_from_inputs
from strata.ct.preprocess import run_preprocess_ct
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(CTPreprocessConfig, dict(snakemake.params.ct), where="preprocess.ct")
    kind, masks = study_from_inputs(list(snakemake.input.files), list(snakemake.input.masks))
    log.info("study %s (%s, %d files, %d masks)", snakemake.wildcards.study, kind,
             len(snakemake.input.files), len(masks))
    run_preprocess_ct(snakemake.wildcards.study, kind, [Path(f) for f in snakemake.input.files], masks, cfg,
                      Path(snakemake.output.tensors), Path(snakemake.output.row))
