"""Snakemake entry point of rule figures_reg2rg: generated reports next to the references."""

from pathlib import Path

from strata.config import from_dict
from strata.evaluation.config import BestCheckpoint
from strata.figures.runs import RunFigures, reg2rg_reports_figure
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = RunFigures(
        family="reg2rg",
        run=snakemake.wildcards.run,
        data="ct",
        checkpoints=Path("."),  # not read: the generated outputs hold the reports
        cache_dir=Path(snakemake.input.manifest).parent.parent,
        metrics=tuple(Path(p) for p in snakemake.input.metrics),
        best=from_dict(BestCheckpoint, dict(snakemake.params.best), where="evaluation.best_checkpoint.reg2rg"),
        pose_test_sequences=1,  # not used
        ct_spacing=(1.0, 1.0, 1.0),  # not used
    )
    generated = {int(Path(p).parent.name): Path(p) for p in snakemake.input.generated}
    log.info("Reg2RG report figure of %s (best checkpoint %d)", cfg.run, cfg.best_step())
    reg2rg_reports_figure(cfg, generated, Path(snakemake.output.reports))
