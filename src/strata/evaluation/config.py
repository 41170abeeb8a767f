"""Typed ``evaluation:`` config section (generation sizes, probe protocol, best checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeConfig:
    """Ridge linear probes (hBehaveMAE's protocol: fixed alpha grid, deterministic splits;
    :mod:`strata.evaluation.protocol`).

    Args:
        alphas: ridge penalties tried; the one with the lowest efficient leave-one-out
            error on the training part is used (``RidgeClassifierCV``: no randomness).
        folds: test folds over the non-validation groups (pose sequences; CT studies,
            stratified by finding combination); every group is tested once.
        validation_fraction: groups set aside to choose the best checkpoint (``*_val``
            metrics); never part of a reported test number.
        bootstrap: resamples of held-out units (pose: behaviour segments; CT: studies) for
            the 95 % intervals of scores and margins.
        pose_test_sequences: pose VAE metrics and figures: the held-out sequences, the last
            ones in sorted name order.
    """

    alphas: tuple[float, ...]
    folds: int
    validation_fraction: float
    bootstrap: int
    pose_test_sequences: int


@dataclass(frozen=True)
class BestCheckpoint:
    """Which metric picks a run's best checkpoint.

    Args:
        metric: a ``metric`` name of the evaluate output (``level`` = ``all`` for
            per-run metrics, else the mean over levels is used).
        higher_is_better: direction of ``metric``.
    """

    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class PoseVAEGenerationConfig:
    """What pose VAE generate jobs draw besides reconstructions.

    Args:
        prior_samples: sequences decoded from the prior.
        interpolation_steps: latents on the path between two held-out windows (>= 2).
        seed: seed of the prior draw.
    """

    prior_samples: int
    interpolation_steps: int
    seed: int


@dataclass(frozen=True)
class GenerationConfig:
    """What the ``generate`` jobs write.

    Args:
        batch_size: samples per forward pass and per resumable part file.
        frame_stride: pose embeddings are extracted every this many frames of a window.
        posevae: pose VAE sampling; the rule passes it to pose VAE jobs only (None
            elsewhere), so changing it re-runs no other family's jobs.
    """

    batch_size: int
    frame_stride: int
    posevae: PoseVAEGenerationConfig | None = None


@dataclass(frozen=True)
class EvaluationConfig:
    """The ``evaluation:`` section.

    Args:
        generation: sizes of the generated outputs.
        probe: linear-probe protocol.
        best_checkpoint: per model family, the metric that chooses the best checkpoint.
    """

    generation: GenerationConfig
    probe: ProbeConfig
    best_checkpoint: dict[str, BestCheckpoint]
