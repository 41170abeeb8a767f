"""Snakemake entry point of rule ct_manifest: per-study rows -> one manifest."""

from pathlib import Path

from strata.ct.preprocess import merge_manifest
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    log.info("merging %d rows", len(snakemake.input.rows))
    merge_manifest([Path(p) for p in snakemake.input.rows], Path(snakemake.output[0]))
