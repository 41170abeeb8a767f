"""The figures of one run (what the ``figures`` rules call).

Per run: the rollout overlay of the best checkpoint (``rollout.png``, raw rollout matrix
in ``rollout.npy``) on the first held-out pose window or the first CT study, training-loss
curves (``loss.png``) and metric-vs-checkpoint curves (``metrics.png``). Pose VAE runs add
reconstructions of held-out windows and prior samples + an interpolation (best checkpoint);
Reg2RG runs (rollout of the frozen ViT-3D on the first held-out study) add generated
reports next to the references (``reports.png``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from strata.config import from_dict
from strata.evaluation.checkpoints import load_model
from strata.evaluation.config import BestCheckpoint
from strata.evaluation.data import ct_volumes, model_input, pose_test_mask, pose_windows
from strata.evaluation.model_names import TRAINED
from strata.evaluation.summary import best_checkpoints, wide_table
from strata.figures.ct import ct_rollout_figure
from strata.figures.curves import loss_figure, metric_figure
from strata.figures.pose import pose_rollout_figure, reconstruction_figure, samples_figure
from strata.figures.reports import reports_figure
from strata.figures.rollout_maps import (
    hiera3d_rollout,
    hjepa_rollout,
    posevae_rollout,
    reg2rg_rollout,
)
from strata.io.atomic import atomic_path
from strata.models.reg2rg.mask_encoder import build_encoders
from strata.reg2rg.config import Reg2RGConfig
from strata.reg2rg.split import held_out_studies
from strata.training.checkpoint import META

CURVE_METRICS = {
    "posevae": ["recon_mse", "kl", "active_units"],
    "reg2rg": ["bleu1", "bleu4", "meteor", "rouge_l", "finding_accuracy"],
    # those present are drawn: behaviour probe, label-file task means, embedding statistics
    "default": ["probe_macro_f1", "probe_accuracy", "task_f1", "task_seq_f1", "task_mse", "embedding_std"],
}


@dataclass(frozen=True)
class RunFigures:
    """Inputs of one run's figures.

    Args:
        family: model family.
        run: run name.
        data: ``pose`` or ``ct``.
        checkpoints: the run's ``checkpoints`` directory.
        cache_dir: ``results/cache``.
        metrics: the run's evaluate outputs (every checkpoint).
        best: the family's best-checkpoint rule.
        pose_test_sequences: held-out sequences (which window to draw).
        ct_spacing: voxel spacing of the cached CT volumes (mm).
    """

    family: str
    run: str
    data: Literal["pose", "ct"]
    checkpoints: Path
    cache_dir: Path
    metrics: tuple[Path, ...]
    best: BestCheckpoint
    pose_test_sequences: int
    ct_spacing: tuple[float, float, float]

    def long_metrics(self) -> pd.DataFrame:
        """The trained checkpoints' rows of every evaluate output (baselines left out)."""
        long = pd.concat([pd.read_parquet(p) for p in self.metrics], ignore_index=True)
        return long[long["model"] == TRAINED].reset_index(drop=True)

    def best_step(self) -> int:
        best = best_checkpoints(wide_table(self.long_metrics()), {self.family: self.best})
        return int(best["step"].iloc[0])


def first_test_window(cache_dir: Path, n_test: int) -> int:
    return int(np.flatnonzero(pose_test_mask(pose_windows(cache_dir).table, n_test))[0])


def reg2rg_meta(checkpoints: Path, step: int) -> tuple[Reg2RGConfig, dict]:
    """The config and meta of a Reg2RG checkpoint (``checkpoints/<epoch>/meta.json``)."""
    path = Path(checkpoints) / str(step) / META
    meta = json.loads(path.read_text())
    return from_dict(Reg2RGConfig, meta["config"], where=f"{path}: config"), meta


def reg2rg_rollout_figure(cfg: RunFigures, step: int, png: Path) -> np.ndarray:
    """Spatial rollout of Reg2RG's frozen ViT-3D on the first held-out study's volume."""
    r2, meta = reg2rg_meta(cfg.checkpoints, step)
    data = ct_volumes(cfg.cache_dir)
    ids = data.table["study_id"].astype(str).tolist()
    study = held_out_studies(ids, r2.split)[0]
    x = data[ids.index(study)]["x"][None]  # (1, C, H, W, D)
    vit = build_encoders(r2.encoder, int(meta["seed"]), None).vit
    result = reg2rg_rollout(vit, x.to(vit.patch_proj.weight.dtype))
    ct_rollout_figure(x[0, 0].float().numpy(), result.relevance.numpy(), cfg.ct_spacing,
                      f"{cfg.family}/{cfg.run}: frozen ViT-3D (same in every checkpoint), held-out study {study}",
                      png)
    return result.matrix.numpy()


def rollout_figure(cfg: RunFigures, png: Path, npy: Path) -> None:
    step = cfg.best_step()
    if cfg.family == "reg2rg":
        matrix = reg2rg_rollout_figure(cfg, step, png)
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, matrix.astype(np.float32))
        return
    model = load_model(cfg.family, cfg.checkpoints, step)
    title = f"{cfg.family}/{cfg.run}, checkpoint {step}"
    if cfg.data == "pose":
        data = pose_windows(cfg.cache_dir)
        i = first_test_window(cfg.cache_dir, cfg.pose_test_sequences)
        x, valid = data.x[i:i + 1], data.valid[i:i + 1]
        row = data.table.iloc[i]
        name = f"window {i} ({row['sequence']}, frames {row['start']}-{row['stop'] - 1})"
        if cfg.family == "posevae":
            result = posevae_rollout(model, x, valid)
        else:
            fn = hiera3d_rollout if cfg.family == "hiera3d" else hjepa_rollout
            result = fn(model, model_input(cfg.family, x, "pose"))
            result.relevance = result.relevance[:, 0, :]  # (T, 1, F) -> (T, F)
        matrix = result.matrix.numpy()
        pose_rollout_figure(result.relevance.numpy(), x[0, :, 0].numpy(), f"{title}, held-out {name}", png,
                            matrix if cfg.family == "posevae" else None)
    else:
        data = ct_volumes(cfg.cache_dir)
        x = data[0]["x"][None]  # (1, C, H, W, D)
        fn = hiera3d_rollout if cfg.family == "hiera3d" else hjepa_rollout
        result = fn(model, model_input(cfg.family, x, "ct"))
        matrix = result.matrix.numpy()
        ct_rollout_figure(x[0, 0].numpy(), result.relevance.numpy(), cfg.ct_spacing,
                          f"{title}, study {data.table['study_id'].iloc[0]}", png)
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
        np.save(fh, matrix.astype(np.float32))


def curve_figures(cfg: RunFigures, train_log: Path, checkpoint_steps: list[int], loss_png: Path,
                  metrics_png: Path) -> None:
    log = pd.read_parquet(train_log)
    metrics = cfg.long_metrics()
    if cfg.family == "reg2rg":  # checkpoints are epochs: mark them at their optimizer step
        checkpoint_steps = [int(reg2rg_meta(cfg.checkpoints, e)[1]["step"]) for e in checkpoint_steps]
        log = log.drop(columns=["epoch"], errors="ignore")
        metrics = split_corpus_metrics(metrics)
    loss_figure(log, checkpoint_steps, f"{cfg.family}/{cfg.run}: training", loss_png)
    names = CURVE_METRICS.get(cfg.family, CURVE_METRICS["default"])
    metric_figure(metrics, names, cfg.best_step(),
                  f"{cfg.family}/{cfg.run}: held-out metrics per checkpoint", metrics_png)


def split_corpus_metrics(long: pd.DataFrame) -> pd.DataFrame:
    """Report metrics ``X`` / ``X_corpus`` -> metric ``X`` with level ``per-sample mean`` /
    ``corpus`` (one panel per metric, both lines in it); other metrics unchanged."""
    long = long.copy()
    corpus = long["metric"].str.endswith("_corpus")
    paired = long["metric"].isin(set(long.loc[corpus, "metric"].str.removesuffix("_corpus")))
    long.loc[paired, "level"] = "per-sample mean"
    long.loc[corpus, "level"] = "corpus"
    long.loc[corpus, "metric"] = long.loc[corpus, "metric"].str.removesuffix("_corpus")
    return long


def posevae_figures(cfg: RunFigures, generated: Mapping[int, Path], recon_png: Path, samples_png: Path,
                    windows: int = 3) -> None:
    """Reconstructions of ``windows`` held-out windows and the prior samples + interpolation."""
    step = cfg.best_step()
    table = pd.read_parquet(generated[step])
    data = pose_windows(cfg.cache_dir)
    test = np.flatnonzero(pose_test_mask(data.table, cfg.pose_test_sequences))
    picks = test[np.linspace(0, len(test) - 1, windows).round().astype(int)]
    recon = table[table["kind"] == "reconstruction"].set_index("window_id")
    t, f = data.x.shape[1], data.x.shape[-1]
    recons = np.stack([np.asarray(recon.loc[int(i), "pose"]).reshape(t, f) for i in picks])
    names = [f"window {i} ({data.table['sequence'].iloc[i]})" for i in picks]
    title = f"{cfg.family}/{cfg.run}, checkpoint {step}"
    reconstruction_figure(data.x[picks, :, 0].numpy(), data.valid[picks, :, 0].numpy(), recons, names,
                          f"{title}: held-out windows and reconstructions", recon_png)

    def poses(kind: str) -> np.ndarray:
        rows = table[table["kind"] == kind].sort_values("step")
        return np.stack([np.asarray(p).reshape(t, f) for p in rows["pose"]])

    samples_figure(poses("prior"), poses("interpolation"), title, samples_png)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def reg2rg_reports_figure(cfg: RunFigures, generated: Mapping[int, Path], png: Path, studies: int = 3) -> None:
    """Generated reports of the best checkpoint next to the references (``studies`` held-out studies)."""
    step = cfg.best_step()
    table = pd.read_parquet(generated[step])
    names = sorted(table["study_id"].unique())[:studies]
    reports_figure(table, names, f"{cfg.family}/{cfg.run}, checkpoint (epoch) {step}: held-out studies", png)
