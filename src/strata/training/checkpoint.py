"""Checkpoints: ``checkpoints/<step>/`` with safetensors weights, resume state and provenance.

Layout of a run directory ``results/<family>/<run>/``::

    checkpoints/<step>/model.safetensors   weights (architecture JSON in the metadata)
    checkpoints/<step>/training_state.pt   optimizer, scheduler, RNG states, step
    checkpoints/<step>/meta.json           config subset, seed, data hashes, versions, commit, device
    train_log.parquet                      one row per optimizer step
    resume/<step>/                         the same files, hard-linked, while a run is unfinished

Snakemake deletes a job's declared outputs before it re-runs it (after a crash, a kill,
or a cluster's wall time); ``resume/`` is not a declared output, so a re-run finds the
last complete state there, re-creates the earlier ``checkpoints/<step>`` from it and
continues. A finished run removes ``resume/``, so a forced
re-run trains from scratch. ``training_state.pt`` is read with ``weights_only=True``:
it holds tensors and plain containers only. Each resume state also holds
``training_state.sha256``, checked before a resume reads the state (the weights carry their
own hash, :mod:`strata.io.tensor_files`); it stays out of ``meta.json`` because
``torch.save`` of equal states is not always byte-equal, and a resumed run's checkpoints
are byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from strata.io.atomic import atomic_dir, sha256_files, write_parquet
from strata.io.tensor_files import CacheIntegrityError, load_tensors, save_tensors

WEIGHTS = "model.safetensors"
STATE = "training_state.pt"
STATE_HASH = "training_state.sha256"
META = "meta.json"
LOG = "train_log.parquet"
PACKAGES = ("torch", "numpy", "monai", "transformers", "safetensors", "snakemake", "strata")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's commit, or None outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class ResumeState:
    step: int  # optimizer steps already taken
    model: dict[str, torch.Tensor]
    training: dict[str, Any]
    log: pd.DataFrame


class CheckpointStore:
    """Writes and finds the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, fingerprint: str) -> None:
        self.run_dir, self.fingerprint = Path(run_dir), fingerprint
        self.checkpoints, self.resume_dir = self.run_dir / "checkpoints", self.run_dir / "resume"

    def save(self, step: int, model: torch.nn.Module, training: dict[str, Any], meta: dict[str, Any],
             log: pd.DataFrame, architecture: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` (resume copy first, then the declared output by hard links)."""
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with atomic_dir(self.resume_dir / str(step)) as tmp:
            save_tensors(weights, tmp / WEIGHTS, metadata={"architecture": architecture}, written_by="train (checkpoint)")
            torch.save(training, tmp / STATE)
            (tmp / STATE_HASH).write_text(sha256_files([tmp / STATE]) + "\n")
            (tmp / META).write_text(json.dumps({**meta, "step": step, "fingerprint": self.fingerprint},
                                               indent=2, sort_keys=True) + "\n")
            write_parquet(log, tmp / LOG)
        return self._publish(step)

    def _publish(self, step: int) -> Path:
        """``checkpoints/<step>`` from ``resume/<step>`` (hard links, atomically)."""
        final = self.checkpoints / str(step)
        with atomic_dir(final) as tmp:
            for name in (WEIGHTS, STATE, META):
                _link_or_copy(self.resume_dir / str(step) / name, tmp / name)
        return final

    def restore_checkpoints(self, step: int) -> list[int]:
        """Re-create the declared ``checkpoints/<s>`` of every resume state ``s <= step``
        that lost it (Snakemake deletes a job's outputs before re-running it, so a resumed
        run would otherwise end without its earlier checkpoints). Returns the steps restored."""
        restored = []
        for path in sorted(self.resume_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
            if path.name.isdigit() and int(path.name) <= step and not (self.checkpoints / path.name).exists():
                self._publish(int(path.name))
                restored.append(int(path.name))
        return restored

    def latest(self) -> ResumeState | None:
        """The last complete resume state written by a run with the same fingerprint."""
        if not self.resume_dir.is_dir():
            return None
        steps = sorted((int(p.name) for p in self.resume_dir.iterdir() if p.name.isdigit()), reverse=True)
        for step in steps:
            path = self.resume_dir / str(step)
            meta = json.loads((path / META).read_text())
            if meta.get("fingerprint") != self.fingerprint:
                shutil.rmtree(self.resume_dir)  # another config or data: never resume from it
                return None
            training = self._read_state(path)
            return ResumeState(step, load_tensors(str(path / WEIGHTS)), training, pd.read_parquet(path / LOG))
        return None

    def _read_state(self, path: Path) -> dict[str, Any]:
        """``training_state.pt`` of a resume state, after checking it against its recorded hash."""
        state, recorded = path / STATE, path / STATE_HASH
        how = f"delete {self.resume_dir} to train this run from scratch"
        if recorded.is_file() and (not state.is_file() or sha256_files([state]) != recorded.read_text().strip()):
            raise CacheIntegrityError(f"{state}: missing or its content does not match the SHA-256 recorded in "
                                      f"{recorded} (written by rule train); {how}")
        try:
            return torch.load(state, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError) as err:
            raise CacheIntegrityError(f"{state}: unreadable ({err}; written by rule train); {how}") from err

    def finish(self, log: pd.DataFrame) -> None:
        """Write the run's log and drop the resume copies (the checkpoints stay)."""
        write_parquet(log, self.run_dir / LOG)
        shutil.rmtree(self.resume_dir, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_meta(config: dict[str, Any], seed: int, data_hashes: dict[str, str], device: torch.device | str
             ) -> dict[str, Any]:
    """Provenance recorded with every checkpoint (no timestamps: reruns stay byte-identical)."""
    return {
        "config": config,
        "seed": seed,
        "data_sha256": data_hashes,
        "packages": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(Path(__file__).parent),
        "device": str(device),
    }
