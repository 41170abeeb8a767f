"""Snakemake entry point of rule figures_posevae: reconstructions and prior samples."""

from pathlib import Path

from strata.config import from_dict
from strata.evaluation.config import BestCheckpoint
from strata.figures.runs import RunFigures, posevae_figures
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = RunFigures(
        family="posevae",
        run=snakemake.wildcards.run,
        data="pose",
        checkpoints=Path("."),  # not read: the generated outputs hold the poses
        cache_dir=Path(snakemake.input.manifest).parent.parent,
        metrics=tuple(Path(p) for p in snakemake.input.metrics),
        best=from_dict(BestCheckpoint, dict(snakemake.params.best), where="evaluation.best_checkpoint.posevae"),
        pose_test_sequences=int(snakemake.params.pose_test_sequences),
        ct_spacing=(1.0, 1.0, 1.0),
    )
    generated = {int(Path(p).parent.name): Path(p) for p in snakemake.input.generated}
    log.info("pose VAE figures of %s (best checkpoint %d)", cfg.run, cfg.best_step())
    posevae_figures(cfg, generated, Path(snakemake.output.reconstructions), Path(snakemake.output.samples))
