"""Cached tensor files carry a content hash that every reader verifies."""

from __future__ import annotations

import re

import pytest
import torch

from strata.io.tensor_files import (
    CacheIntegrityError,
    load_tensors,
    read_tensor_metadata,
    save_tensors,
)


@pytest.fixture
def cached(tmp_path):
    path = tmp_path / "studies" / "s1.safetensors"
    tensors = {"image": torch.arange(4096, dtype=torch.float16).reshape(16, 256), "flag": torch.ones(3, dtype=torch.uint8)}
    save_tensors(tensors, path, metadata={"study_id": "s1"}, written_by="preprocess_ct")
    return path, tensors


def test_a_saved_file_loads_and_verifies(cached):
    path, tensors = cached
    loaded = load_tensors(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert read_tensor_metadata(path)["study_id"] == "s1"


def test_a_truncated_file_names_itself_its_writer_and_the_rebuild(cached):
    path, _ = cached
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CacheIntegrityError, match=rf"{re.escape(str(path))}: unreadable or truncated tensor file .*"
                                                  r"written by preprocess_ct; delete it and re-run snakemake"):
        load_tensors(path)


def test_flipped_bits_in_the_data_are_detected(cached):
    path, _ = cached
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside the tensor data, after the header
    path.write_bytes(bytes(data))
    with pytest.raises(CacheIntegrityError, match=rf"{re.escape(str(path))}: content does not match its hash "
                                                  r"\(damaged data\); written by preprocess_ct"):
        load_tensors(path)


def test_an_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CacheIntegrityError, match=rf"{re.escape(str(path))}: unreadable or truncated tensor file"):
        load_tensors(path)


def test_a_killed_write_leaves_only_its_own_temporary_which_the_next_write_removes(tmp_path):
    """SIGKILL between the temporary write and the rename: the next write of that file cleans up."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    final = tmp_path / "studies" / "s1.safetensors"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from strata.io import atomic
        def killed(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = killed
        from strata.io.tensor_files import save_tensors
        save_tensors({{"x": torch.zeros(1000)}}, {str(final)!r}, written_by="test")
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in final.parent.iterdir())
    assert len(left) == 1 and left[0].startswith(".s1.safetensors.") and left[0].endswith(".tmp"), left
    save_tensors({"x": torch.ones(3)}, final, written_by="test")
    assert sorted(p.name for p in final.parent.iterdir()) == ["s1.safetensors"]
    assert os.path.getsize(final) > 0
