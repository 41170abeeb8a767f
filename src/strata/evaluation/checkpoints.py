"""Rebuild a trained model from ``results/<family>/<run>/checkpoints/<step>/``.

The architecture is read from the weights file's metadata (what training wrote), not
from the current config, so a checkpoint always loads into the model it was saved from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from strata.io.atomic import sha256_files
from strata.io.tensor_files import load_tensors, read_tensor_metadata
from strata.models.registry import build_model
from strata.training.checkpoint import WEIGHTS


def weights_path(checkpoints: Path, step: int) -> Path:
    path = Path(checkpoints) / str(step) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}")
    return path


def load_model(family: str, checkpoints: Path, step: int) -> torch.nn.Module:
    """The model of checkpoint ``step`` in eval mode on CPU."""
    path = weights_path(checkpoints, step)
    architecture = read_tensor_metadata(path).get("architecture")
    if architecture is None:
        raise ValueError(f"{path}: no architecture in the safetensors metadata")
    model = build_model(family, architecture, where=f"{path}: architecture")
    model.load_state_dict(load_tensors(str(path)))
    return model.eval()


def checkpoint_sha256(checkpoints: Path, step: int) -> str:
    """Content hash of the weights (part of the resume fingerprint of generate jobs)."""
    return sha256_files([weights_path(checkpoints, step)])
