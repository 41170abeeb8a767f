"""Pose VAE outputs (reconstructions, prior samples, latent interpolations) and metrics.

Generated rows (``kind`` column of the generate output, see :mod:`strata.evaluation.generate`):

* ``reconstruction``: every cached window decoded from its posterior mean, with the
  posterior ``mu`` / ``logvar`` ([N chunks, latent_dim], flattened);
* ``prior``: ``prior_samples`` windows decoded from ``z ~ N(0, I)`` (seeded generator);
* ``interpolation``: ``interpolation_steps`` windows decoded on the straight line between
  the posterior means of the first and the last held-out window (step 0 = first).

Metrics, on the held-out windows (the last ``pose_test_sequences`` sequences):
``recon_mse`` (squared error averaged over observed keypoints only, as the training
loss), ``kl`` (per-chunk KL to N(0, I) summed over latent dimensions, averaged over
chunks; nats), ``active_units`` (latent dimensions whose posterior mean varies by more
than 0.01 over the held-out chunks, Burda et al. 2016).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from strata.models.pose_vae import ACTIVE_UNIT_THRESHOLD, PoseVAE


def _flat(a: Tensor) -> list[np.ndarray]:
    return list(a.detach().float().reshape(a.shape[0], -1).numpy())


def pose_rows(kind: str, pose: Tensor, sample_ids: list[str], window_id: np.ndarray, sequence: list[str],
              start: np.ndarray, step: np.ndarray, mu: Tensor | None = None,
              logvar: Tensor | None = None) -> pd.DataFrame:
    """Rows of decoded windows ``pose`` [B, T, F] (schema in the module docstring)."""
    b, t, f = pose.shape
    empty = [np.zeros(0, np.float32)] * b
    return pd.DataFrame({
        "kind": [kind] * b, "sample_id": sample_ids, "window_id": window_id.astype(np.int64),
        "sequence": sequence, "start": start.astype(np.int64), "step": step.astype(np.int64),
        "num_frames": np.full(b, t, np.int64), "features": np.full(b, f, np.int64),
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
                     table["start"].to_numpy(), np.zeros(len(ids)), out.posterior.mu, out.posterior.logvar)


@torch.no_grad()
def prior_and_interpolation(model: PoseVAE, num_frames: int, num_samples: int, steps: int, seed: int,
                            ends: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor]) -> pd.DataFrame:
    """Prior samples and the interpolation between two windows ``ends`` (each [T, 1, F])."""
    generator = torch.Generator().manual_seed(seed)
    prior = model.sample_prior(num_samples, num_frames, generator=generator).pose
    n = np.arange(num_samples)
    rows = [pose_rows("prior", prior, [f"prior-{i}" for i in n], np.full(num_samples, -1), [""] * num_samples,
                      np.zeros(num_samples), n)]
    post = model.encode(torch.stack(ends), torch.stack(valid))
    path = PoseVAE.interpolate(post.mu[0], post.mu[1], steps)  # (steps, N, Z)
    decoded = model.decode(path, num_frames=num_frames).pose
    k = np.arange(steps)
    rows.append(pose_rows("interpolation", decoded, [f"interpolation-{i}" for i in k], np.full(steps, -1),
                          [""] * steps, np.zeros(steps), k))
    return pd.concat(rows, ignore_index=True)


def vae_metrics(recon: np.ndarray, x: np.ndarray, valid: np.ndarray, mu: np.ndarray,
                logvar: np.ndarray) -> dict[str, float]:
    """``recon``, ``x``, ``valid``: [B, T, F]; ``mu``, ``logvar``: [B, N, Z] (held-out windows)."""
    weight = valid.astype(np.float64)
    mse = float(((recon - x) ** 2 * weight).sum() / max(weight.sum(), 1.0))
    kl_units = 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)  # (B, N, Z)
    kl = float(kl_units.sum(-1).mean())
    means = mu.reshape(-1, mu.shape[-1]).astype(np.float64)
    active = int((means.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum()) if len(means) > 1 else 0
    return {"recon_mse": mse, "kl": kl, "active_units": float(active)}
