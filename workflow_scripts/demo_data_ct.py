"""Snakemake entry point of rule demo_data_ct: the synthetic CT studies and report CSV."""

from strata.config import CTDataConfig, DemoCTConfig, from_dict
from strata.ct.demo import write_demo_ct
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    data = from_dict(CTDataConfig, dict(snakemake.params.data), where="data.ct")
    demo = from_dict(DemoCTConfig, dict(snakemake.params.demo), where="demo.ct")
    log.info("writing demo CT: %s", demo)
    write_demo_ct(data, demo, int(snakemake.params.seed))
