"""Snakemake entry point of rule preprocess_reports: report CSV -> checked region table."""

from pathlib import Path

from strata.ct.reports import run_preprocess_reports
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    log.info("reports %s for %d studies", snakemake.input.reports, len(snakemake.params.studies))
    run_preprocess_reports(Path(snakemake.input.reports), list(snakemake.params.studies), Path(snakemake.output[0]))
