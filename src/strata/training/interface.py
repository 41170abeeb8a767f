"""What the shared training loop needs from a model.

Every model the loop trains (hierarchical ViT-3D MAE, H-JEPA, pose VAE) subclasses
:class:`TrainableModel`: it turns a batch into a loss plus scalar metrics, may act after
each optimizer step (H-JEPA's EMA update of its target encoder belongs there, never
before the step), and describes its architecture as plain data so a checkpoint can
rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class StepOutput:
    """The loss to back-propagate and detached scalars to log (name -> value)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class TrainableModel(nn.Module):
    """Base class of models trained by :func:`strata.training.loop.train`."""

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """Loss of one batch (keys as the model's dataset yields them)."""
        raise NotImplementedError

    def step_inputs(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample random inputs of one step's *global* batch, drawn from ``generator``
        (seeded from the run's seed and the step): tensors whose first axis is the sample.

        The loop adds each process's slice to its batch, so masks and noise of a sample do
        not depend on how many processes share the batch. :meth:`training_step` falls back
        to the global RNG for keys that are absent. Default: none.
        """
        return {}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step with the 0-based step just taken."""

    def no_weight_decay(self) -> set[str]:
        """Names of parameters AdamW must not decay (besides biases and norms), e.g.
        position embeddings and mask tokens (timm's convention)."""
        return set()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (all that require grad, by default)."""
        return [p for p in self.parameters() if p.requires_grad]
