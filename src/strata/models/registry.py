"""Model families by name: their typed architecture config, model class and input layout.

Imports are lazy so the Snakefile (which only needs the names) never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from strata.config import from_dict


@dataclass(frozen=True)
class Family:
    """Where a family's code lives and how it wants pose windows.

    ``video`` models take ``[C, T, H, W]`` (a pose window ``[T, 1, F]`` gains a channel
    axis: C = 1, H = 1, W = F); ``sequence`` models take the window ``[T, 1, F]`` as is.
    CT volumes ``[C, H, W, D]`` are passed unchanged.
    """

    module: str
    config_class: str
    model_class: str
    pose_layout: Literal["video", "sequence"]


FAMILIES: dict[str, Family] = {
    "hiera3d": Family("strata.models.hiera3d", "Hiera3DConfig", "Hiera3DMAE", "video"),
    "hjepa": Family("strata.models.hjepa", "HJEPAConfig", "HJEPA", "video"),
    "posevae": Family("strata.models.pose_vae", "PoseVAEConfig", "PoseVAE", "sequence"),
}


def architecture_config(family: str, architecture: dict[str, Any], where: str = "architecture") -> Any:
    """The family's typed architecture config built from its YAML mapping."""
    spec = FAMILIES[family]
    cls = getattr(importlib.import_module(spec.module), spec.config_class)
    return from_dict(cls, architecture, where=where)


def build_model(family: str, architecture: dict[str, Any], where: str = "architecture") -> Any:
    """A freshly initialised model of ``family`` (seed the global RNG before calling)."""
    spec = FAMILIES[family]
    cls = getattr(importlib.import_module(spec.module), spec.model_class)
    return cls(architecture_config(family, architecture, where))
