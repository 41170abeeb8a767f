"""Every generate / evaluate / summary / figure path, known from the config alone.

Pure Python (no torch): the Snakefile imports it. Checkpoint steps follow from each run's
``train`` section (:meth:`strata.training.config.TrainConfig.checkpoint_steps`), so the DAG
lists one generate and one evaluate job per (family, run, step) before training runs.
Reg2RG, configured in its own top-level section, adds its per-epoch checkpoints
(:func:`reg2rg_checkpoints`) through :func:`model_checkpoints`' ``extra`` argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from strata.config import from_dict
from strata.training.config import TrainConfig

#: families whose generate jobs write embeddings that the evaluate jobs probe
EMBEDDING_FAMILIES = ("hiera3d", "hjepa")
GENERATE = "results/{family}/{run}/generate/{step}/outputs.parquet"
EVALUATE = "results/{family}/{run}/evaluate/{step}/metrics.parquet"
SUMMARY = ("results/summary/metrics.parquet", "results/summary/metrics.csv", "results/summary/metrics.md",
           "results/summary/best_checkpoints.csv", "results/summary/baselines.csv")
VERDICT = ("results/summary/verdict.md", "results/summary/verdict.csv")
FIGURES = ("rollout.png", "rollout.npy", "loss.png", "metrics.png")
FIGURE_DIR = "results/figures/{family}/{run}"
POSEVAE_FIGURES = ("reconstructions.png", "samples.png")
EMBEDDING_FIGURES = ("probes.png",)
REG2RG_FIGURES = ("reports.png",)


def reg2rg_checkpoints(section: Mapping[str, Any] | None) -> list[tuple[str, str, int]]:
    """(``reg2rg``, run, epoch) of every Reg2RG checkpoint (one per epoch), from the
    top-level ``reg2rg:`` section (None: no Reg2RG)."""
    if not section:
        return []
    epochs = int(section["train"]["epochs"])
    return [("reg2rg", str(section["run"]), epoch) for epoch in range(1, epochs + 1)]


def model_checkpoints(models: Mapping[str, Mapping[str, Any]],
                      extra: Iterable[tuple[str, str, int]] = ()) -> list[tuple[str, str, int]]:
    """(family, run, step) of every checkpoint the config schedules, sorted."""
    out = list(extra)
    for family in sorted(models):
        for run in sorted(models[family]):
            train = from_dict(TrainConfig, dict(models[family][run]["train"]), where=f"models.{family}.{run}.train")
            out += [(family, run, step) for step in train.checkpoint_steps()]
    return sorted(out)


def model_runs(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(family, run) of every configured run, sorted."""
    return sorted((family, run) for family in models for run in models[family])


def generate_targets(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [GENERATE.format(family=f, run=r, step=s) for f, r, s in model_checkpoints(models)]


def evaluate_targets(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [EVALUATE.format(family=f, run=r, step=s) for f, r, s in model_checkpoints(models)]


def figure_targets(models: Mapping[str, Mapping[str, Any]], reg2rg: Mapping[str, Any] | None = None) -> list[str]:
    """Per run: rollout (PNG + raw .npy), loss and metric curves; embedding runs' probes
    against baselines; pose VAE samples; Reg2RG sample reports."""
    extra = {FIGURE_DIR.format(family=f, run=r) for f, r, _ in reg2rg_checkpoints(reg2rg)}
    out = []
    for family, run in model_runs(models):
        folder = FIGURE_DIR.format(family=family, run=run)
        names = FIGURES + (POSEVAE_FIGURES if family == "posevae" else ()) + \
            (EMBEDDING_FIGURES if family in EMBEDDING_FAMILIES else ())
        out += [f"{folder}/{name}" for name in names]
    for folder in sorted(extra):
        out += [f"{folder}/{name}" for name in FIGURES + REG2RG_FIGURES]
    return out


def evaluation_final_targets(models: Mapping[str, Mapping[str, Any]], reg2rg: Mapping[str, Any] | None = None
                             ) -> list[str]:
    """What ``rule all`` needs for the evaluation stages: the summary, the verdict and every figure."""
    return [*SUMMARY, *VERDICT, *figure_targets(models, reg2rg)]
