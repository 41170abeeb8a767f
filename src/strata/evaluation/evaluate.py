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

Embedding models (per level): ``embedding_std`` (std over samples, averaged over
dimensions: near 0 means collapse); probes (:mod:`strata.evaluation.probes`)
``probe_accuracy``, ``probe_macro_f1``, ``probe_alpha``, ``probe_n_train``,
``probe_n_test``. Pose: per-frame behaviour labels, split by sequence. CT: one probe per
finding (``/nodule_size``, ``/cardiomegaly``, ``/effusion`` suffixes), stratified k-fold
over studies (``probe.ct_split``);
the unsuffixed ``probe_accuracy`` / ``probe_macro_f1`` average the findings. CT probes
need finding labels (the demo plan); without them only ``embedding_std`` is written.
Pose VAE (level ``all``, held-out windows): ``recon_mse``, ``kl``, ``active_units``
(:mod:`strata.evaluation.posevae`). Reg2RG (level ``all``): report metrics and, on the
demo, finding-level accuracy (:mod:`strata.evaluation.reg2rg`).
"""

from __future__ import annotations

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


def probe_metrics(result: ProbeResult, suffix: str = "") -> dict[str, float]:
    return {f"probe_accuracy{suffix}": result.accuracy, f"probe_macro_f1{suffix}": result.macro_f1,
            f"probe_alpha{suffix}": result.alpha, f"probe_n_train{suffix}": float(result.n_train),
            f"probe_n_test{suffix}": float(result.n_test)}


def pose_level_metrics(rows: pd.DataFrame, x: np.ndarray, probe: ProbeConfig) -> dict[str, float]:
    is_test = rows["sequence"].isin(held_out_sequences(rows["sequence"], probe.pose_test_sequences)).to_numpy()
    return probe_metrics(split_probe(x, rows["label"].to_numpy(), is_test, probe.alphas))


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
    out = {}
    for level, rows in table.groupby("level", sort=True):
        rows = rows.sort_values(["sample_id", "frame"], kind="stable").reset_index(drop=True)
        x = np.stack(rows["embedding"].to_numpy()).astype(np.float64)
        metrics = {"embedding_std": float(x.std(axis=0).mean())}
        if job.data == "pose":
            metrics.update(pose_level_metrics(rows, x, job.probe))
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
