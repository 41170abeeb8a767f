"""Snakemake entry point of rule preprocess_pose: pose file -> window shards + manifest
+ whole sequences."""

from pathlib import Path

from strata.config import PosePreprocessConfig, from_dict
from strata.logging_setup import snakemake_logging
from strata.pose.stage import preprocess_pose

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(PosePreprocessConfig, dict(snakemake.params.pose), where="preprocess.pose")
    log.info("preprocess pose %s with %s", snakemake.input.pose, cfg)
    preprocess_pose(
        cfg,
        Path(snakemake.input.pose),
        Path(snakemake.output.shards),
        Path(snakemake.output.manifest),
        Path(snakemake.output.sequences),
    )
