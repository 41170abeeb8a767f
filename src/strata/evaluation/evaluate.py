"""The ``evaluate`` rule body: one checkpoint's generated outputs -> ``metrics.parquet``.

Output schema (long format, one row per metric):

=======  =======  ==============================================================
column   type     meaning
=======  =======  ==============================================================
family   string   model family
run      string   run name
step     int64    checkpoint step
level    string   hierarchy level (``0``, ``1``, ..) or ``all`` for per-run metrics
model    string   ``trained`` (the checkpoint) or the name of a baseline scored by the
                  same protocol on the same rows (:mod:`strata.evaluation.baselines`)
metric   string   metric name (below)
value    float64  the value
=======  =======  ==============================================================

Embedding models (per level), always: ``embedding_std`` (std over samples, averaged over
dimensions: near 0 means collapse), ``embedding_norm`` (mean L2 norm of a sample) and
``embedding_effective_rank`` (exp of the entropy of the normalised eigenvalues of the
feature covariance, Roy & Vetterli 2007: 1 = every sample on one line, D = isotropic);
probes (:mod:`strata.evaluation.protocol`: validation part + k test folds by sequence / study)
``probe_accuracy``, ``probe_macro_f1`` (pooled test folds), ``probe_*_val`` (validation part,
chooses the best checkpoint), ``probe_macro_f1_ci_low/high`` (bootstrap), ``probe_alpha``,
``probe_n_train``, ``probe_n_test``, ``probe_n_val`` where labels exist, and on each baseline's
rows ``probe_macro_f1_margin_ci_low/high`` (paired interval of trained minus that baseline).
Pose: the per-frame behaviour labels of the pose file (the ``behaviour`` row of a MABe22
``.npy``'s ``annotations``, or the ``behaviour`` column of a long table); without any
per-frame label (MABe22's training file) no probe rows are written. With a label file in
MABe22's test-label format (``data.pose.labels``), per task and level the metrics of
:mod:`strata.evaluation.tasks` (``task_f1/<task>``, ``task_mse/<task>``, ``task_seq_f1/<task>``,
... and the means ``task_f1``, ``task_mse``, ``task_seq_f1``, ``task_seq_mse``). CT: one
probe per finding (``/nodule_size``, ``/cardiomegaly``, ``/effusion`` suffixes), folds
stratified by finding combination; the unsuffixed ``probe_accuracy`` / ``probe_macro_f1``
average the findings. CT probes need finding labels (the demo plan); without them only the
embedding statistics are written. Every embedding metric is also written for the baselines of
:mod:`strata.evaluation.baselines` (statistics for ``random_init`` only).
Pose VAE (level ``all``, held-out windows): ``recon_mse``, ``kl``, ``active_units`` and its
baselines and diagnostics (:mod:`strata.evaluation.posevae`). Reg2RG (level ``all``): report
metrics, on the demo finding-level accuracy, and its controls (:mod:`strata.evaluation.reg2rg`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from strata.ct.demo_plan import DemoFindings
from strata.evaluation.baselines import CTBaselines, Features, PoseBaselines
from strata.evaluation.config import ProbeConfig
from strata.evaluation.model_names import RANDOM_INIT, TRAINED
from strata.evaluation.posevae import posevae_metrics
from strata.evaluation.probes import scores
from strata.evaluation.protocol import (
    Predictions,
    bootstrap_intervals,
    cross_validated,
    group_split,
    segment_units,
)
from strata.evaluation.tasks import task_level_metrics
from strata.pose.labels import TaskLabels, check_overlap, read_task_labels

log = logging.getLogger(__name__)

COLUMNS = ("family", "run", "step", "level", "model", "metric", "value")
#: model -> level -> metric -> value (:data:`TRAINED` always present)
Metrics = dict[str, dict[str, dict[str, float]]]
CT_FINDINGS = ("nodule_size", "cardiomegaly", "effusion")


@dataclass(frozen=True)
class EvaluateJob:
    """One (family, run, checkpoint) evaluate job.

    Args:
        family: model family.
        run: run name.
        step: checkpoint step.
        data: ``pose`` or ``ct``.
        generated: the generate job's ``outputs.parquet``.
        cache_dir: ``results/cache``.
        probe: probe protocol and split.
        ct_findings: study id -> finding name -> class label (None: no CT labels).
        demo_findings: Reg2RG on the demo: study id -> the stated findings (None elsewhere).
        pose_labels: pose embedding runs: a label file in MABe22's test-label format
            (``data.pose.labels``; None: no task probes).
        pose_source: the pose file the cache was made from (named in label-file errors).
        init_generated: embedding runs: the generate output of checkpoint step 0 (the random
            initialisation), probed as the ``random_init`` baseline (None: not scored).
        baselines: score the non-learned baselines.
        velocity_gain: the run's architecture ``velocity_gain`` (pose PCA baseline input).
    """

    family: str
    run: str
    step: int
    data: Literal["pose", "ct"]
    generated: Path
    cache_dir: Path
    probe: ProbeConfig
    ct_findings: Mapping[str, Mapping[str, str]] | None
    demo_findings: Mapping[str, DemoFindings] | None = None
    pose_labels: Path | None = None
    pose_source: str = ""
    init_generated: Path | None = None
    baselines: bool = True
    velocity_gain: float = 0.0


def probe_scores(preds: Sequence[Predictions], suffix: str = "") -> dict[str, float]:
    """Test and validation scores of probes (one per task; CT: per finding), averaged."""
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")
    test = [scores(p.y, p.pred) for p in preds]
    val = [scores(p.val_y, p.val_pred) for p in preds if len(p.val_y)]
    return {f"probe_accuracy{suffix}": mean([a for a, _ in test]), f"probe_macro_f1{suffix}": mean([f for _, f in test]),
            f"probe_accuracy_val{suffix}": mean([a for a, _ in val]),
            f"probe_macro_f1_val{suffix}": mean([f for _, f in val]),
            f"probe_alpha{suffix}": float(np.nanmedian([p.alpha for p in preds])) if preds else float("nan"),
            f"probe_n_train{suffix}": float(np.median([p.n_train for p in preds])),
            f"probe_n_test{suffix}": float(len(preds[0].y)), f"probe_n_val{suffix}": float(len(preds[0].val_y))}


def embedding_statistics(x: np.ndarray) -> dict[str, float]:
    """Label-free statistics of samples ``x`` [N, D] (module docstring)."""
    out = {"embedding_std": float(x.std(axis=0).mean()),
           "embedding_norm": float(np.linalg.norm(x, axis=1).mean())}
    if len(x) > 1:
        mean = x.mean(axis=0)
        cov = (x.T @ x) / len(x) - np.outer(mean, mean)  # no centred copy of a large x
        eigen = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
        p = eigen / eigen.sum() if eigen.sum() > 0 else np.ones(1)
        p = p[p > 0]
        out["embedding_effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
    return out


def _level_probes(job: EvaluateJob, rows: pd.DataFrame, features: Mapping[str, Features]
                  ) -> dict[str, list[Predictions]] | None:
    """Every model's probes on one level: pose the behaviour label, CT each finding."""
    groups = rows["sequence"].astype(str).to_numpy()
    if job.data == "pose":
        y = rows["label"].to_numpy(np.int64)
        labelled = sorted(set(groups[y >= 0]))
        if len(labelled) < 3:
            if labelled:
                log.warning("only %d sequences have behaviour labels: no behaviour probe", len(labelled))
            return None
        split = group_split(labelled, job.probe.folds, job.probe.validation_fraction)
        units = segment_units(groups, rows["frame"].to_numpy(np.int64), y)
        targets = [y]
    else:
        if job.ct_findings is None:
            return None
        combination = {s: "/".join(str(job.ct_findings[s][f]) for f in CT_FINDINGS) for s in groups}
        split = group_split(list(groups), job.probe.folds, job.probe.validation_fraction, combination)
        units = np.arange(len(rows))
        targets = [np.unique([job.ct_findings[s][f] for s in groups], return_inverse=True)[1] for f in CT_FINDINGS]
    return {model: [cross_validated(f.x, y, groups, units, split, job.probe.alphas, f.reduce_to) for y in targets]
            for model, f in features.items()}


def _probe_metrics(job: EvaluateJob, preds: dict[str, list[Predictions]]) -> dict[str, dict[str, float]]:
    """Scores, bootstrap intervals and paired margins (trained minus each baseline)."""
    out: dict[str, dict[str, float]] = {}
    # seed 0 for every job: the same resamples for every checkpoint and baseline
    intervals = bootstrap_intervals(preds, TRAINED, job.probe.bootstrap, seed=0)
    for model, probes in preds.items():
        metrics = probe_scores(probes)
        if job.data == "ct":
            for name, p in zip(CT_FINDINGS, probes, strict=True):
                metrics.update({k: v for k, v in probe_scores([p], f"/{name}").items()
                                if k.startswith(("probe_macro_f1", "probe_accuracy"))})
        low, high, m_low, m_high = intervals[model]
        metrics.update({"probe_macro_f1_ci_low": low, "probe_macro_f1_ci_high": high})
        if model != TRAINED:
            metrics.update({"probe_macro_f1_margin_ci_low": m_low, "probe_macro_f1_margin_ci_high": m_high})
        out[model] = metrics
    return out


def embedding_metrics(job: EvaluateJob) -> Metrics:
    """The checkpoint's embeddings and every baseline (:mod:`strata.evaluation.baselines`),
    per level: statistics, probes, task probes (pose label file)."""
    table = pd.read_parquet(job.generated)
    init = pd.read_parquet(job.init_generated) if job.init_generated is not None and job.step != 0 else None
    tasks: tuple[TaskLabels, list[str]] | None = None
    if job.data == "pose" and job.pose_labels is not None:
        labels = read_task_labels(job.pose_labels)
        source = job.pose_source or str(job.cache_dir / "pose" / "manifest.parquet")
        tasks = labels, check_overlap(labels, table["sequence"].unique(), source)
        log.info("%s: %d tasks over %d labelled pose sequences", labels.path, len(labels.tasks), len(tasks[1]))
        task_split = group_split(tasks[1], job.probe.folds, job.probe.validation_fraction)  # every level, model
    raw: PoseBaselines | CTBaselines | None = None
    if job.baselines:
        raw = PoseBaselines(job.cache_dir, job.velocity_gain) if job.data == "pose" else CTBaselines(job.cache_dir)
    out: Metrics = {}
    for level, rows in table.groupby("level", sort=True):
        rows = _sorted(rows)
        x = np.stack(rows["embedding"].to_numpy()).astype(np.float64)
        features = {TRAINED: Features(x)}
        if init is not None:
            init_rows = _sorted(init[init["level"] == level])
            if not init_rows[["sample_id", "frame"]].equals(rows[["sample_id", "frame"]]):
                raise ValueError(f"{job.init_generated}: level {level} rows differ from {job.generated}")
            features[RANDOM_INIT] = Features(np.stack(init_rows["embedding"].to_numpy()).astype(np.float64))
        if raw is not None:
            features.update(raw.level(rows, x.shape[1]))
        metrics: dict[str, dict[str, float]] = {m: {} for m in features}
        for model in (TRAINED, RANDOM_INIT):
            if model in features:
                metrics[model].update(embedding_statistics(features[model].x))
        preds = _level_probes(job, rows, features)
        if preds is not None:
            for model, scored in _probe_metrics(job, preds).items():
                metrics[model].update(scored)
        if tasks is not None:
            for model, f in features.items():
                metrics[model].update(task_level_metrics(rows, f, *tasks, task_split, job.probe.alphas,
                                                         where=f"level {level}, {model}"))
        for model, values in metrics.items():
            if values:
                out.setdefault(model, {})[str(level)] = values
    return out


def _sorted(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values(["sample_id", "frame"], kind="stable").reset_index(drop=True)


def reg2rg_metrics(job: EvaluateJob) -> Metrics:
    """Reg2RG's report metrics and controls (imported here: peft / transformers cost ~6 s of
    CPU per process, which every other family's evaluate job would otherwise pay)."""
    from strata.evaluation.reg2rg import reg2rg_metrics as metrics

    return metrics(job)


#: family -> its metrics and baselines (model -> level -> metric -> value)
EVALUATORS: dict[str, Callable[[EvaluateJob], Metrics]] = {
    "hiera3d": embedding_metrics,
    "hjepa": embedding_metrics,
    "posevae": posevae_metrics,
    "reg2rg": reg2rg_metrics,
}


def evaluate(job: EvaluateJob) -> pd.DataFrame:
    """All metrics of one checkpoint as a long table (schema in the module docstring)."""
    if job.family not in EVALUATORS:
        raise ValueError(f"no evaluator for model family {job.family!r} (known: {sorted(EVALUATORS)})")
    scored = EVALUATORS[job.family](job)
    if TRAINED not in scored:
        raise ValueError(f"the {job.family} evaluator returned no {TRAINED!r} metrics (got {sorted(scored)})")
    records = [(job.family, job.run, job.step, level, model, metric, float(value))
               for model, levels in scored.items() for level, metrics in levels.items()
               for metric, value in metrics.items()]
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return frame.astype({"step": "int64", "value": "float64"})
