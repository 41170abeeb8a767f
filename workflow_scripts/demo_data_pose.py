"""Snakemake entry point of rule demo_data_pose: the synthetic MABe22-style pose files."""

from pathlib import Path

from strata.config import DemoPoseConfig, from_dict
from strata.logging_setup import snakemake_logging
from strata.pose.demo import write_demo_pose

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(DemoPoseConfig, dict(snakemake.params.demo), where="demo.pose")
    log.info("demo pose %s, seed %d", cfg, snakemake.params.seed)
    labels = getattr(snakemake.output, "labels", None)  # only where data.pose.labels is set
    write_demo_pose(
        cfg,
        int(snakemake.params.seed),
        Path(snakemake.output.npy),
        Path(snakemake.output.parquet),
        Path(labels) if labels else None,
    )
