"""Cached tensor files carry a content hash that every reader verifies."""

from __future__ import annotations

import re

import pytest
import torch

from strata.io.tensor_files import CacheIntegrityError, load_tensors, read_tensor_metadata, save_tensors


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
