"""Snakemake entry point of rule figures: one run's rollout overlay and curves."""

from pathlib import Path

from strata.config import from_dict
from strata.evaluation.config import BestCheckpoint
from strata.figures.runs import RunFigures, curve_figures, rollout_figure, set_threads
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    set_threads(snakemake.threads)
    family = snakemake.wildcards.family
    cfg = RunFigures(
        family=family,
        run=snakemake.wildcards.run,
        data=snakemake.params.data,
        checkpoints=Path(snakemake.input.checkpoints),
        cache_dir=Path(snakemake.input.manifest).parent.parent,
        metrics=tuple(Path(p) for p in snakemake.input.metrics),
        best=from_dict(BestCheckpoint, dict(snakemake.params.best), where=f"evaluation.best_checkpoint.{family}"),
        pose_test_sequences=int(snakemake.params.pose_test_sequences),
        ct_spacing=tuple(snakemake.params.ct_spacing),
    )
    log.info("figures of %s/%s (best checkpoint %d)", family, cfg.run, cfg.best_step())
    rollout_figure(cfg, Path(snakemake.output.rollout), Path(snakemake.output.raw))
    curve_figures(cfg, Path(snakemake.input.train_log), list(snakemake.params.steps), Path(snakemake.output.loss),
                  Path(snakemake.output.metrics))
