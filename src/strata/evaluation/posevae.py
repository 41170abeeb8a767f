"""Pose VAE outputs (reconstructions, prior samples, latent interpolations), its metrics and
the baselines it is measured against.

Generated rows (``kind`` column of the generate output, see :mod:`strata.evaluation.generate`):

* ``reconstruction``: every cached window decoded from its posterior mean, with the
  posterior ``mu`` / ``logvar`` ([N chunks, latent_dim], flattened);
* ``prior``: ``prior_samples`` windows decoded from ``z ~ N(0, I)`` (seeded generator);
* ``prior_mean``: one window decoded from the prior mean ``z = 0`` (the same for every
  input: what the decoder produces when the latent carries nothing);
* ``interpolation``: ``interpolation_steps`` windows decoded on the straight line between
  the posterior means of the first and the last held-out window (step 0 = first).

Metrics (:func:`posevae_metrics`), on the held-out windows (the windows of the last
``pose_test_sequences`` sequences). Every MSE is the squared error averaged over observed
keypoints only (as the training loss), in the cached normalised units: with ``center:
arena`` a unit is half the arena (``arena_px / 2`` px), so ``recon_rmse_px`` =
``sqrt(recon_mse) * arena_px / 2``.

* ``trained``: ``recon_mse``, ``recon_rmse_px``, ``kl`` (per-chunk KL to N(0, I) summed
  over latent dimensions, averaged over chunks; nats), ``active_units`` (latent
  dimensions whose posterior mean varies by more than 0.01 over the held-out chunks,
  Burda et al. 2016), and the diagnostics :func:`border_mse_ratio`,
  ``prior_mean_mse_ratio`` (prior-mean MSE / ``recon_mse``: >> 1 when the latent is used)
  and :func:`prior_statistics` (prior samples vs data, in px);
* baselines on the same windows and the same MSE: ``pca`` (PCA fitted on the windows of
  the other sequences, with the VAE's latent budget: chunks x latent_dim components),
  ``copy_previous`` (each frame predicted by the frame before it; the first frame is
  copied, error 0), ``keyframe_interpolation`` (linear interpolation between the frames at
  the chunk borders, 0, L, 2L, ... and the last frame) and ``prior_mean`` (the ``prior_mean``
  decoding for every window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from strata.evaluation.data import held_out_sequences, pose_windows
from strata.evaluation.model_names import TRAINED
from strata.io.tensor_files import read_tensor_metadata
from strata.models.pose_vae import ACTIVE_UNIT_THRESHOLD, PoseVAE, chunk_count
from strata.pose.keypoints import KEYPOINT_INDEX, N_KEYPOINTS

#: prior-sample statistics: name -> the two keypoints whose distance it is (None: centre speed)
POSE_STATISTICS: dict[str, tuple[str, str] | None] = {
    "body_length": ("nose", "tail_base"), "ear_gap": ("ear_left", "ear_right"), "speed": None}


def _flat(a: Tensor) -> list[np.ndarray]:
    return list(a.detach().float().reshape(a.shape[0], -1).numpy())


def pose_rows(kind: str, pose: Tensor, sample_ids: list[str], window_id: np.ndarray, sequence: list[str],
              start: np.ndarray, step: np.ndarray, chunk_len: int, mu: Tensor | None = None,
              logvar: Tensor | None = None) -> pd.DataFrame:
    """Rows of decoded windows ``pose`` [B, T, F] by a model with chunks of ``chunk_len``
    frames (schema in :mod:`strata.evaluation.generate`)."""
    b, t, f = pose.shape
    empty = [np.zeros(0, np.float32)] * b
    return pd.DataFrame({
        "kind": [kind] * b, "sample_id": sample_ids, "window_id": window_id.astype(np.int64),
        "sequence": sequence, "start": start.astype(np.int64), "step": step.astype(np.int64),
        "num_frames": np.full(b, t, np.int64), "features": np.full(b, f, np.int64),
        "chunk_len": np.full(b, chunk_len, np.int64),
        "latent_dim": np.full(b, mu.shape[-1] if mu is not None else 0, np.int64),
        "pose": _flat(pose), "mu": _flat(mu) if mu is not None else empty,
        "logvar": _flat(logvar) if logvar is not None else empty,
    })


@torch.no_grad()
def reconstructions(model: PoseVAE, x: Tensor, valid: Tensor, table: pd.DataFrame) -> pd.DataFrame:
    """Posterior-mean reconstructions of the windows ``x`` [B, T, 1, F] listed in ``table``."""
    out = model.reconstruct(x, valid)
    ids = table["window_id"].to_numpy()
    return pose_rows("reconstruction", out.recon, [str(i) for i in ids], ids, list(table["sequence"]),
                     table["start"].to_numpy(), np.zeros(len(ids)), model.config.chunk_len, out.posterior.mu,
                     out.posterior.logvar)


@torch.no_grad()
def prior_mean_decoding(model: PoseVAE, num_frames: int) -> Tensor:
    """The decoding of ``z = 0`` (the prior mean) for every chunk: [1, num_frames, F]."""
    z = torch.zeros(1, chunk_count(num_frames, model.config.chunk_len), model.config.latent_dim)
    return model.decode(z.to(model.optimizer_steps.device), num_frames=num_frames).pose


@torch.no_grad()
def prior_and_interpolation(model: PoseVAE, num_frames: int, num_samples: int, steps: int, seed: int,
                            ends: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor]) -> pd.DataFrame:
    """Prior samples, the prior-mean decoding and the interpolation between two windows
    ``ends`` (each [T, 1, F])."""
    generator = torch.Generator().manual_seed(seed)
    prior = model.sample_prior(num_samples, num_frames, generator=generator).pose
    n, L, one = np.arange(num_samples), model.config.chunk_len, np.zeros(1)
    rows = [pose_rows("prior", prior, [f"prior-{i}" for i in n], np.full(num_samples, -1), [""] * num_samples,
                      np.zeros(num_samples), n, L),
            pose_rows("prior_mean", prior_mean_decoding(model, num_frames), ["prior-mean"], one - 1, [""], one, one, L)]
    post = model.encode(torch.stack(ends), torch.stack(valid))
    path = PoseVAE.interpolate(post.mu[0], post.mu[1], steps)  # (steps, N, Z)
    decoded = model.decode(path, num_frames=num_frames).pose
    k = np.arange(steps)
    rows.append(pose_rows("interpolation", decoded, [f"interpolation-{i}" for i in k], np.full(steps, -1),
                          [""] * steps, np.zeros(steps), k, L))
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------- metrics


def masked_mse(pred: np.ndarray, x: np.ndarray, valid: np.ndarray) -> float:
    """Squared error averaged over observed entries (``valid``), as the training loss."""
    weight = valid.astype(np.float64)
    return float(((pred - x) ** 2 * weight).sum() / max(weight.sum(), 1.0))


def vae_metrics(recon: np.ndarray, x: np.ndarray, valid: np.ndarray, mu: np.ndarray,
                logvar: np.ndarray) -> dict[str, float]:
    """``recon``, ``x``, ``valid``: [B, T, F]; ``mu``, ``logvar``: [B, N, Z] (held-out windows)."""
    kl_units = 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)  # (B, N, Z)
    kl = float(kl_units.sum(-1).mean())
    means = mu.reshape(-1, mu.shape[-1]).astype(np.float64)
    active = int((means.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum()) if len(means) > 1 else 0
    return {"recon_mse": masked_mse(recon, x, valid), "kl": kl, "active_units": float(active)}


def pca_reconstruction(train: np.ndarray, test: np.ndarray, components: int) -> np.ndarray:
    """``test`` [B, T, F] projected on the first ``components`` principal components of the
    ``train`` windows [M, T, F] (capped at what M windows can span) and mapped back."""
    from sklearn.decomposition import PCA  # lazy: generate jobs import this module

    k = min(components, train.shape[0], train.shape[1] * train.shape[2])
    pca = PCA(n_components=k, svd_solver="full").fit(train.reshape(len(train), -1))
    return pca.inverse_transform(pca.transform(test.reshape(len(test), -1))).reshape(test.shape)


def copy_previous(x: np.ndarray) -> np.ndarray:
    """Frame t predicted by frame t - 1 of ``x`` [B, T, F]; frame 0 by itself."""
    return np.concatenate([x[:, :1], x[:, :-1]], axis=1)


def keyframe_interpolation(x: np.ndarray, chunk_len: int) -> np.ndarray:
    """``x`` [B, T, F] linearly interpolated between its key frames 0, L, 2L, ... and T - 1
    (the frames at the chunk borders), per feature."""
    t = x.shape[1]
    keys = np.unique(np.append(np.arange(0, t, chunk_len), t - 1))
    hi = np.clip(np.searchsorted(keys, np.arange(t), side="right"), 1, len(keys) - 1)
    lo_f, hi_f = keys[hi - 1], keys[hi]
    w = ((np.arange(t) - lo_f) / np.maximum(hi_f - lo_f, 1))[None, :, None]
    return (1 - w) * x[:, lo_f] + w * x[:, hi_f]


def border_frames(num_frames: int, chunk_len: int) -> np.ndarray:
    """bool [T]: frames next to a border between two chunks (the last frame of a chunk and
    the first of the next)."""
    t = np.arange(num_frames)
    first, last = (t % chunk_len == 0) & (t > 0), (t % chunk_len == chunk_len - 1) & (t < num_frames - 1)
    return first | last


def border_mse_ratio(recon: np.ndarray, x: np.ndarray, valid: np.ndarray, chunk_len: int) -> float:
    """Masked MSE on the frames next to chunk borders / masked MSE on the other frames
    (1: no jump at the borders)."""
    border = border_frames(x.shape[1], chunk_len)
    if not border.any():
        return 1.0
    inner = masked_mse(recon[:, ~border], x[:, ~border], valid[:, ~border])
    return masked_mse(recon[:, border], x[:, border], valid[:, border]) / max(inner, 1e-12)


def pose_statistic(x: np.ndarray, valid: np.ndarray | None, name: str, px_per_unit: float) -> np.ndarray:
    """Values (px) of one :data:`POSE_STATISTICS` entry per (window, frame, agent) from
    windows [B, T, F] in (agent, keypoint, xy) order; with ``valid`` only where both
    keypoints (both frames, for the speed) were observed."""
    b, t, f = x.shape
    kp = x.reshape(b, t, f // (2 * N_KEYPOINTS), N_KEYPOINTS, 2)
    seen = np.ones(kp.shape[:-1], bool) if valid is None else valid.reshape(kp.shape).all(-1)
    pair = POSE_STATISTICS[name]
    if pair is None:
        c = KEYPOINT_INDEX["center"]
        value = np.linalg.norm(np.diff(kp[:, :, :, c], axis=1), axis=-1)  # (B, T-1, A)
        ok = seen[:, 1:, :, c] & seen[:, :-1, :, c]
    else:
        i, j = (KEYPOINT_INDEX[k] for k in pair)
        value = np.linalg.norm(kp[:, :, :, i] - kp[:, :, :, j], axis=-1)  # (B, T, A)
        ok = seen[:, :, :, i] & seen[:, :, :, j]
    return value[ok] * px_per_unit


def prior_statistics(prior: np.ndarray, data: np.ndarray, valid: np.ndarray,
                     px_per_unit: float) -> dict[str, float]:
    """Prior samples [S, T, F] vs the data windows [B, T, F] for every
    :data:`POSE_STATISTICS` entry: the data's 5th / 95th percentiles and median, the prior
    samples' median, and the fraction of prior values inside the data's 5-95% range."""
    out = {}
    for name in POSE_STATISTICS:
        ref = pose_statistic(data, valid, name, px_per_unit)
        gen = pose_statistic(prior, None, name, px_per_unit)
        lo, mid, hi = np.percentile(ref, [5, 50, 95])
        out |= {f"data_{name}_px_p05": float(lo), f"data_{name}_px": float(mid), f"data_{name}_px_p95": float(hi),
                f"prior_{name}_px": float(np.median(gen)),
                f"prior_{name}_in_range": float(((gen >= lo) & (gen <= hi)).mean())}
    return out


def px_per_unit(shards_dir: Path, shard: str) -> float:
    """Pixels per cached feature unit, from the preprocessing parameters in a shard's
    metadata (``center: arena``: ``arena_px / 2``; ``none``: 1)."""
    path = Path(shards_dir) / shard
    params = read_tensor_metadata(path).get("params")
    if not params or "center" not in params:
        raise ValueError(f"{path}: no preprocessing 'params' (center, arena_px) in its metadata")
    if params.get("egocentric"):
        raise ValueError(f"{path}: egocentric features have no centre trajectory to measure speed on")
    return float(params["arena_px"]) / 2.0 if params["center"] == "arena" else 1.0


def _stack(rows: pd.DataFrame, t: int, f: int) -> np.ndarray:
    return np.stack(rows["pose"].to_numpy()).reshape(len(rows), t, f).astype(np.float64)


def posevae_metrics(job: Any) -> dict[str, dict[str, dict[str, float]]]:
    """The ``EVALUATORS`` entry: model -> level -> metric (level ``all``): the trained
    model with its diagnostics, and the baselines (module docstring)."""
    table = pd.read_parquet(job.generated)
    recon = table[table["kind"] == "reconstruction"].sort_values("window_id")
    cache = Path(job.cache_dir)
    data = pose_windows(cache)
    test = set(held_out_sequences(data.table["sequence"], job.probe.pose_test_sequences))
    is_test = data.table["sequence"].isin(test).to_numpy()
    recon = recon[recon["sequence"].isin(test)]
    ids = recon["window_id"].to_numpy()
    t, f = int(recon["num_frames"].iloc[0]), int(recon["features"].iloc[0])
    z_dim, chunk_len = int(recon["latent_dim"].iloc[0]), int(recon["chunk_len"].iloc[0])
    everything = data.x.reshape(len(data), t, f).double().numpy()
    all_valid = data.valid.reshape(len(data), t, f).numpy().astype(bool)
    x, valid = everything[ids], all_valid[ids]
    pose = _stack(recon, t, f)
    mu = np.stack(recon["mu"].to_numpy()).reshape(len(ids), -1, z_dim)
    logvar = np.stack(recon["logvar"].to_numpy()).reshape(mu.shape)
    chunks = mu.shape[1]
    scale = px_per_unit(cache / "pose" / "shards", str(data.table["shard"].iloc[0]))

    trained = vae_metrics(pose, x, valid, mu, logvar)
    predictions = {
        "pca": pca_reconstruction(everything[~is_test], x, chunks * z_dim),
        "copy_previous": copy_previous(x),
        "keyframe_interpolation": keyframe_interpolation(x, chunk_len),
    }
    prior_mean = table[table["kind"] == "prior_mean"]
    if prior_mean.empty:
        raise ValueError(f"{job.generated}: no 'prior_mean' rows (written by an older generate step: rerun it)")
    predictions["prior_mean"] = np.broadcast_to(_stack(prior_mean, t, f), x.shape)
    scores = {name: {"recon_mse": masked_mse(p, x, valid)} for name, p in predictions.items()}
    trained |= {"n_test_windows": float(len(ids)), "border_mse_ratio": border_mse_ratio(pose, x, valid, chunk_len),
                "prior_mean_mse_ratio": scores["prior_mean"]["recon_mse"] / max(trained["recon_mse"], 1e-12)}
    trained |= prior_statistics(_stack(table[table["kind"] == "prior"], t, f), everything, all_valid, scale)
    result = {TRAINED: trained} | scores
    for metrics in result.values():
        metrics["recon_rmse_px"] = float(np.sqrt(metrics["recon_mse"]) * scale)
    return {model: {"all": metrics} for model, metrics in result.items()}
