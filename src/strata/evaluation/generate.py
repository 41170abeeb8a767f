"""The ``generate`` rule body: one checkpoint -> ``outputs.parquet`` (resumable).

Output schemas (one row per item, parquet):

Hierarchical ViT-3D and H-JEPA (embeddings, :mod:`strata.evaluation.embeddings`):

============  ==============  ===========================================================
column        type            meaning
============  ==============  ===========================================================
sample_id     string          pose: window id; CT: study id
sequence      string          pose: sequence name; CT: study id
frame         int64           pose: frame in the sequence (start + offset); CT: -1
offset        int64           pose: frame inside the window (every ``frame_stride``); CT: -1
level         int64           hierarchy level / stage, 0 = finest
token         int64           pose: the level's time token of the frame (frame map); CT: -1
time_tokens   int64           pose: the level's number of time tokens; CT: -1
label         int64           pose: the frame's behaviour label (-1 unknown); CT: -1
embedding     list<float32>   the level's features (width differs per level)
============  ==============  ===========================================================

Pose VAE (:mod:`strata.evaluation.posevae`): ``kind`` (reconstruction | prior | prior_mean |
interpolation), ``sample_id``, ``window_id`` (-1 unless a cached window), ``sequence``,
``start``, ``step`` (index among prior samples / interpolation steps), ``num_frames``,
``features``, ``chunk_len`` (frames per latent chunk), ``latent_dim`` (Z; 0 when no
posterior), ``pose`` (list<float32>, T*F row-major), ``mu`` and ``logvar`` (list<float32>,
N*Z, reconstructions only; empty otherwise).

Reg2RG (:mod:`strata.evaluation.reg2rg`): one row per (held-out study, region or whole
report) with generated and reference text and the decoding settings, for the checkpoint
and its controls (``control``: ``""``, ``swapped_tokens``, ``normal_template``).

Chunks of ``batch_size`` samples go to part files in ``work_dir`` (not a declared output;
:class:`~strata.evaluation.parts.ChunkedParquet`), so a killed job resumes where it stopped.
A family plugs in by adding a function to :data:`GENERATORS` (and, when its checkpoints
are not rebuilt by :func:`~strata.evaluation.checkpoints.load_model`, to :data:`LOADERS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from strata.config import config_sha256
from strata.evaluation.checkpoints import checkpoint_sha256, load_model
from strata.evaluation.config import GenerationConfig
from strata.evaluation.data import ct_volumes, model_input, pose_test_mask, pose_windows
from strata.evaluation.embeddings import frame_embeddings, level_grids, volume_embeddings
from strata.evaluation.parts import ChunkedParquet
from strata.evaluation.posevae import prior_and_interpolation, reconstructions
from strata.io.atomic import sha256_files

if TYPE_CHECKING:
    from strata.evaluation.reg2rg import Reg2RGSources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateJob:
    """One (family, run, checkpoint) generate job.

    Args:
        family: model family (``hiera3d``, ``hjepa``, ``posevae``).
        data: ``pose`` or ``ct``.
        checkpoints: the run's ``checkpoints`` directory.
        step: checkpoint step.
        cache_dir: ``results/cache``.
        output: the merged parquet file.
        work_dir: part files until the merge (not a Snakemake output).
        generation: sizes and seeds.
        pose_test_sequences: held-out sequences (pose VAE interpolation ends).
        reg2rg: Reg2RG jobs only: tokenizer, token cache, references, held-out studies and
            decoding settings.
    """

    family: str
    data: Literal["pose", "ct"]
    checkpoints: Path
    step: int
    cache_dir: Path
    output: Path
    work_dir: Path
    generation: GenerationConfig
    pose_test_sequences: int
    reg2rg: Reg2RGSources | None = None


def fingerprint(job: GenerateJob) -> str:
    manifest = job.cache_dir / job.data / "manifest.parquet"
    blob = {"weights": checkpoint_sha256(job.checkpoints, job.step), "data": sha256_files([manifest]),
            "generation": job.generation, "test": job.pose_test_sequences, "family": job.family}
    if job.reg2rg is not None:
        src = job.reg2rg
        blob["reg2rg"] = {"sources": src, "reports": sha256_files([src.reports]),
                          "tokenizer": sha256_files(sorted(p for p in src.tokenizer_dir.rglob("*") if p.is_file())),
                          "tokens": sha256_files([src.token_dir / f"{s}.safetensors" for s in src.study_ids])}
    return config_sha256(blob)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def pose_embeddings(job: GenerateJob, model: torch.nn.Module, parts: ChunkedParquet) -> int:
    data = pose_windows(job.cache_dir)
    table, chunks = data.table, _chunks(len(data), job.generation.batch_size)
    num_frames = data.x.shape[1]
    offsets = torch.arange(0, num_frames, job.generation.frame_stride)

    def compute(sl: slice) -> pd.DataFrame:
        rows = table.iloc[sl]
        grids = level_grids(job.family, model, model_input(job.family, data.x[sl], "pose"))
        labels = data.labels[sl][:, offsets].numpy()  # (B, K)
        b, k = labels.shape
        frames = []
        for level, (emb, tokens) in enumerate(frame_embeddings(grids, num_frames, offsets)):
            frames.append(pd.DataFrame({
                "time_tokens": np.full(b * k, grids[level].shape[1], np.int64),
                "sample_id": np.repeat(rows["window_id"].astype(str).to_numpy(), k),
                "sequence": np.repeat(rows["sequence"].to_numpy(), k),
                "frame": (rows["start"].to_numpy()[:, None] + offsets.numpy()[None]).reshape(-1),
                "offset": np.tile(offsets.numpy(), b), "level": np.full(b * k, level, np.int64),
                "token": np.tile(tokens.numpy(), b), "label": labels.reshape(-1),
                "embedding": list(emb.reshape(b * k, -1).float().numpy()),
            }))
        return pd.concat(frames, ignore_index=True)

    for i, sl in enumerate(chunks):
        parts.run(i, lambda sl=sl: compute(sl))
    return len(chunks)


def ct_embeddings(job: GenerateJob, model: torch.nn.Module, parts: ChunkedParquet) -> int:
    data = ct_volumes(job.cache_dir)
    ids = data.table["study_id"].astype(str).to_numpy()
    chunks = _chunks(len(data), job.generation.batch_size)

    def compute(sl: slice) -> pd.DataFrame:
        x = torch.stack([data[i]["x"] for i in range(sl.start, sl.stop)])
        grids = level_grids(job.family, model, model_input(job.family, x, "ct"))
        n = sl.stop - sl.start
        return pd.concat([pd.DataFrame({
            "sample_id": ids[sl], "sequence": ids[sl], "frame": np.full(n, -1), "offset": np.full(n, -1),
            "level": np.full(n, level, np.int64), "token": np.full(n, -1), "time_tokens": np.full(n, -1),
            "label": np.full(n, -1),
            "embedding": list(emb.float().numpy()),
        }) for level, emb in enumerate(volume_embeddings(grids))], ignore_index=True)

    for i, sl in enumerate(chunks):
        parts.run(i, lambda sl=sl: compute(sl))
    return len(chunks)


def posevae_outputs(job: GenerateJob, model: torch.nn.Module, parts: ChunkedParquet) -> int:
    data = pose_windows(job.cache_dir)
    table, chunks = data.table, _chunks(len(data), job.generation.batch_size)
    for i, sl in enumerate(chunks):
        parts.run(i, lambda sl=sl: reconstructions(model, data.x[sl], data.valid[sl], table.iloc[sl]))
    test = np.flatnonzero(pose_test_mask(table, job.pose_test_sequences))
    ends = (int(test[0]), int(test[-1]))
    g = job.generation.posevae
    if g is None:
        raise ValueError("pose VAE generation needs evaluation.generation.posevae")
    parts.run(len(chunks), lambda: prior_and_interpolation(
        model, data.x.shape[1], g.prior_samples, g.interpolation_steps, g.seed,
        (data.x[ends[0]], data.x[ends[1]]), (data.valid[ends[0]], data.valid[ends[1]])))
    return len(chunks) + 1


def embeddings(job: GenerateJob, model: torch.nn.Module, parts: ChunkedParquet) -> int:
    return (pose_embeddings if job.data == "pose" else ct_embeddings)(job, model, parts)


def reg2rg_reports(job: GenerateJob, loaded: Any, parts: ChunkedParquet) -> int:
    """Reg2RG's reports (imported here: peft / transformers cost ~6 s of CPU per process,
    which every other family's generate job would otherwise pay)."""
    from strata.evaluation.reg2rg import reg2rg_reports as reports

    return reports(job, loaded, parts)


def load_for_generation(job: GenerateJob) -> Any:
    from strata.evaluation.reg2rg import load_for_generation as load

    return load(job)


#: family -> writer of its part files, given the loaded model (returns the number of parts)
GENERATORS: dict[str, Callable[[GenerateJob, Any, ChunkedParquet], int]] = {
    "hiera3d": embeddings,
    "hjepa": embeddings,
    "posevae": posevae_outputs,
    "reg2rg": reg2rg_reports,
}


def load_checkpoint_model(job: GenerateJob) -> torch.nn.Module:
    return load_model(job.family, job.checkpoints, job.step)


#: family -> loader of the job's checkpoint (default: :func:`load_checkpoint_model`)
LOADERS: dict[str, Callable[[GenerateJob], Any]] = {"reg2rg": load_for_generation}


def generate(job: GenerateJob) -> pd.DataFrame:
    """Run ``job``: write missing part files, then merge them into ``job.output``."""
    if job.family not in GENERATORS:
        raise ValueError(f"no generator for model family {job.family!r} (known: {sorted(GENERATORS)})")
    model = LOADERS.get(job.family, load_checkpoint_model)(job)
    parts = ChunkedParquet(job.work_dir, fingerprint(job))
    if parts.written():
        log.info("resuming: %d part files of an earlier attempt are kept", parts.written())
    count = GENERATORS[job.family](job, model, parts)
    frame = parts.merge(count, job.output)
    log.info("%s step %d: %d rows in %d parts -> %s", job.family, job.step, len(frame), count, job.output)
    return frame
