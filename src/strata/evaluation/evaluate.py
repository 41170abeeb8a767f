"""The ``evaluate`` rule body: one checkpoint's generated outputs -> ``metrics.parquet``.

Output schema (long format, one row per metric):

=======  =======  ==============================================================
column   type     meaning
=======  =======  ==============================================================
family   string   model family
run      string   run name
step     int64    checkpoint step
level    string   hierarchy level (``0``, ``1``, ..) or ``all`` for per-run metrics
metric   string   metric name (below)
value    float64  the value
=======  =======  ==============================================================

Embedding models (per level), always: ``embedding_std`` (std over samples, averaged over
dimensions: near 0 means collapse), ``embedding_norm`` (mean L2 norm of a sample) and
``embedding_effective_rank`` (exp of the entropy of the normalised eigenvalues of the
feature covariance, Roy & Vetterli 2007: 1 = every sample on one line, D = isotropic);
probes (:mod:`strata.evaluation.probes`) ``probe_accuracy``, ``probe_macro_f1``,
``probe_alpha``, ``probe_n_train``, ``probe_n_test`` where labels exist. Pose: the per-frame
behaviour labels of the pose file (the ``behaviour`` row of a MABe22 ``.npy``'s
``annotations``, or the ``behaviour`` column of a long table), split by sequence: the last
``probe.pose_test_sequences`` of the sequences with any label are tested; without any
per-frame label (MABe22's training file) no probe rows are written. With a label file in
MABe22's test-label format (``data.pose.labels``), per task and level the metrics of
:mod:`strata.evaluation.tasks` (``task_f1/<task>``, ``task_mse/<task>``, ``task_seq_f1/<task>``,
... and the means ``task_f1``, ``task_mse``, ``task_seq_f1``, ``task_seq_mse``). CT: one
probe per finding (``/nodule_size``, ``/cardiomegaly``, ``/effusion`` suffixes), stratified
k-fold over studies (``probe.ct_split``); the unsuffixed ``probe_accuracy`` /
``probe_macro_f1`` average the findings. CT probes need finding labels (the demo plan);
without them only the embedding statistics are written.
Pose VAE (level ``all``, held-out windows): ``recon_mse``, ``kl``, ``active_units``
(:mod:`strata.evaluation.posevae`). Reg2RG (level ``all``): report metrics and, on the
demo, finding-level accuracy (:mod:`strata.evaluation.reg2rg`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from strata.ct.demo_plan import DemoFindings
from strata.evaluation.config import ProbeConfig
from strata.evaluation.data import held_out_sequences, pose_windows
from strata.evaluation.posevae import vae_metrics
from strata.evaluation.probes import (
    ProbeResult,
    cross_validated_probe,
    leave_one_out_probe,
    split_probe,
    stratified_folds,
)
from strata.evaluation.reg2rg import reg2rg_metrics
from strata.evaluation.tasks import task_level_metrics
from strata.pose.labels import TaskLabels, check_overlap, read_task_labels

log = logging.getLogger(__name__)

COLUMNS = ("family", "run", "step", "level", "metric", "value")
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


def probe_metrics(result: ProbeResult, suffix: str = "") -> dict[str, float]:
    return {f"probe_accuracy{suffix}": result.accuracy, f"probe_macro_f1{suffix}": result.macro_f1,
            f"probe_alpha{suffix}": result.alpha, f"probe_n_train{suffix}": float(result.n_train),
            f"probe_n_test{suffix}": float(result.n_test)}


def pose_level_metrics(rows: pd.DataFrame, x: np.ndarray, probe: ProbeConfig) -> dict[str, float]:
    """The per-frame behaviour probe; nothing without labels (a warning when labels exist but
    fewer than two sequences carry them, so no split by sequence is possible)."""
    labels = rows["label"].to_numpy()
    labelled = rows.loc[labels >= 0, "sequence"].unique()
    if len(labelled) < 2:
        if len(labelled):
            log.warning("only sequence %s has behaviour labels: no behaviour probe", labelled[0])
        return {}
    is_test = rows["sequence"].isin(held_out_sequences(labelled, probe.pose_test_sequences)).to_numpy()
    return probe_metrics(split_probe(x, labels, is_test, probe.alphas))


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


def ct_level_metrics(rows: pd.DataFrame, x: np.ndarray, probe: ProbeConfig,
                     findings: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in CT_FINDINGS:
        _, y = np.unique([findings[s][name] for s in rows["sample_id"]], return_inverse=True)
        if probe.ct_split == "leave_one_out":
            result = leave_one_out_probe(x, y, probe.alphas)
        else:
            result = cross_validated_probe(x, y, stratified_folds(y, probe.ct_folds), probe.alphas)
        out.update(probe_metrics(result, f"/{name}"))
    for key in ("probe_accuracy", "probe_macro_f1"):
        out[key] = float(np.mean([out[f"{key}/{name}"] for name in CT_FINDINGS]))
    return out


def embedding_metrics(job: EvaluateJob) -> dict[str, dict[str, float]]:
    table = pd.read_parquet(job.generated)
    tasks: tuple[TaskLabels, list[str]] | None = None
    if job.data == "pose" and job.pose_labels is not None:
        labels = read_task_labels(job.pose_labels)
        source = job.pose_source or str(job.cache_dir / "pose" / "manifest.parquet")
        tasks = labels, check_overlap(labels, table["sequence"].unique(), source)
        log.info("%s: %d tasks over %d labelled pose sequences", labels.path, len(labels.tasks), len(tasks[1]))
    out = {}
    for level, rows in table.groupby("level", sort=True):
        rows = rows.sort_values(["sample_id", "frame"], kind="stable").reset_index(drop=True)
        x = np.stack(rows["embedding"].to_numpy()).astype(np.float64)
        metrics = embedding_statistics(x)
        if job.data == "pose":
            metrics.update(pose_level_metrics(rows, x, job.probe))
            if tasks is not None:
                metrics.update(task_level_metrics(rows, x, *tasks, job.probe.pose_test_sequences, job.probe.alphas,
                                                  where=f"level {level}"))
        elif job.ct_findings is not None:
            metrics.update(ct_level_metrics(rows, x, job.probe, job.ct_findings))
        out[str(level)] = metrics
    return out


def posevae_metrics(job: EvaluateJob) -> dict[str, dict[str, float]]:
    table = pd.read_parquet(job.generated)
    recon = table[table["kind"] == "reconstruction"].sort_values("window_id")
    data = pose_windows(job.cache_dir)
    test = set(held_out_sequences(data.table["sequence"], job.probe.pose_test_sequences))
    recon = recon[recon["sequence"].isin(test)]
    ids = torch.as_tensor(recon["window_id"].to_numpy().copy())
    t, f = int(recon["num_frames"].iloc[0]), int(recon["features"].iloc[0])
    x = data.x[ids].reshape(len(ids), t, f).numpy()
    valid = data.valid[ids].reshape(len(ids), t, f).numpy()
    pose = np.stack(recon["pose"].to_numpy()).reshape(len(ids), t, f)
    mu = np.stack(recon["mu"].to_numpy()).reshape(len(ids), -1, int(recon["latent_dim"].iloc[0]))
    logvar = np.stack(recon["logvar"].to_numpy()).reshape(mu.shape)
    metrics = vae_metrics(pose, x, valid, mu, logvar)
    metrics["n_test_windows"] = float(len(ids))
    return {"all": metrics}


#: family -> its metrics (level -> metric -> value)
EVALUATORS: dict[str, Callable[[EvaluateJob], dict[str, dict[str, float]]]] = {
    "hiera3d": embedding_metrics,
    "hjepa": embedding_metrics,
    "posevae": posevae_metrics,
    "reg2rg": reg2rg_metrics,
}


def evaluate(job: EvaluateJob) -> pd.DataFrame:
    """All metrics of one checkpoint as a long table (schema in the module docstring)."""
    if job.family not in EVALUATORS:
        raise ValueError(f"no evaluator for model family {job.family!r} (known: {sorted(EVALUATORS)})")
    records = [(job.family, job.run, job.step, level, metric, float(value))
               for level, metrics in EVALUATORS[job.family](job).items() for metric, value in metrics.items()]
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return frame.astype({"step": "int64", "value": "float64"})
