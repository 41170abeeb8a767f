"""Cached tensor files (safetensors) that prove their integrity.

Every file written here carries, in its metadata, a SHA-256 of its tensors (names, dtypes,
shapes and bytes) and the stage that wrote it. :func:`load_tensors` recomputes the hash, so
a truncated file, flipped bits or a file from elsewhere fail with the file's name, the
stage that wrote it and how to rebuild it, instead of safetensors' bare "incomplete
metadata" or silent training on damaged data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from strata.io.atomic import atomic_path

log = logging.getLogger(__name__)

METADATA_KEY = "strata"
HASH_KEY = "content_sha256"
WRITER_KEY = "written_by"


class CacheIntegrityError(ValueError):
    """A cached tensor file is unreadable or its content does not match its hash."""


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape, then the raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, Any] | None = None, written_by: str = "") -> None:
    """Write a safetensors file atomically, with byte-identical output for equal inputs.

    ``metadata`` (plus the content hash and ``written_by``, the stage that wrote the file)
    is stored as one sorted JSON string under the key ``strata``: safetensors writes a
    metadata map of several keys in random order, which breaks reproducibility.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), HASH_KEY: tensors_sha256(tensors), WRITER_KEY: written_by}
    # serialised in memory and written by atomic_path: safetensors' own save_file would add
    # a temporary file of its own that a killed job leaves behind under an unrelated name
    data = save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _header_metadata(path: Path) -> dict[str, Any]:
    """The ``strata`` metadata from the file's JSON header alone (readable even when the
    tensor data after it is truncated); {} when the header itself is unreadable."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(min(size, 100_000_000)))
        return json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    except (OSError, struct.error, ValueError, AttributeError):
        return {}


def _rebuild_hint(path: Path, meta: Mapping[str, Any]) -> str:
    writer = meta.get(WRITER_KEY) or "the stage that writes it"
    return f"written by {writer}; delete it and re-run snakemake to rebuild it"


def read_tensor_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`save_tensors` stored in a safetensors file ({} if none)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CacheIntegrityError(f"{path}: unreadable tensor file ({err}); "
                                  f"{_rebuild_hint(Path(path), _header_metadata(Path(path)))}") from err
    return json.loads(header[METADATA_KEY]) if METADATA_KEY in header else {}


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file and verify its content hash (see :func:`load_tensors_and_metadata`)."""
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file's tensors, content hash verified (files without one, written
    before hashes existed, load with a warning), and the metadata :func:`save_tensors` stored."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CacheIntegrityError(f"{path}: unreadable or truncated tensor file ({err}); "
                                  f"{_rebuild_hint(path, _header_metadata(path))}") from err
    meta = read_tensor_metadata(path)
    expected = meta.get(HASH_KEY)
    if expected is None:
        log.warning("%s has no content hash (written by an older version): not verified", path)
    elif tensors_sha256(tensors) != expected:
        raise CacheIntegrityError(f"{path}: content does not match its hash (damaged data); "
                                  f"{_rebuild_hint(path, meta)}")
    return tensors, meta
