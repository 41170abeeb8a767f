"""Reg2RG's published-weight paths: every unusable one is named with its key and what belongs there."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from strata.config import StrataConfig, from_dict
from strata.reg2rg.weight_paths import (
    Reg2RGWeightsError,
    all_weights,
    require_weights,
    weight_problems,
)

FULL = yaml.safe_load((REPO / "config" / "full.yaml").read_text())


def full_reg2rg(root, **paths):
    """The full config's reg2rg section with its weight paths under ``root``."""
    raw = copy.deepcopy(FULL)
    section = raw["reg2rg"]
    section["encoder"]["vit_weights"] = str(root / "RadFM_vit3d.pth")
    section["adapter_weights"] = str(root / "RadFM_perceiver_fc.pth")
    section["llm"]["pretrained"] = section["tokenizer"]["pretrained"] = str(root / "llama")
    for key, value in paths.items():
        section[key] = value
    return from_dict(StrataConfig, raw).reg2rg


def test_demo_config_needs_no_weights():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert all_weights(from_dict(StrataConfig, raw).reg2rg) == []


def test_missing_weights_name_key_path_and_source(tmp_path):
    problems = weight_problems(all_weights(full_reg2rg(tmp_path)))
    assert len(problems) == 4
    llm = next(p for p in problems if p.startswith("reg2rg.llm.pretrained"))
    assert f"{tmp_path / 'llama'} does not exist" in llm and "meta-llama/Llama-2-7b-chat-hf" in llm
    vit = next(p for p in problems if p.startswith("reg2rg.encoder.vit_weights"))
    assert "RadFM_vit3d.pth" in vit and "Reg2RG" in vit


def test_empty_folder_and_empty_file_are_named(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "RadFM_vit3d.pth").write_bytes(b"")
    (tmp_path / "RadFM_perceiver_fc.pth").mkdir()
    problems = weight_problems(all_weights(full_reg2rg(tmp_path)))
    assert any(p.startswith("reg2rg.tokenizer.pretrained") and "holds no tokenizer" in p for p in problems)
    assert any(p.startswith("reg2rg.llm.pretrained") and "holds no Hugging Face model" in p for p in problems)
    assert any(p.startswith("reg2rg.encoder.vit_weights") and "is empty" in p for p in problems)
    assert any(p.startswith("reg2rg.adapter_weights") and "is not a file" in p for p in problems)
    with pytest.raises(Reg2RGWeightsError, match="Reg2RG cannot run"):
        require_weights(all_weights(full_reg2rg(tmp_path)))


def test_complete_weights_pass(tmp_path):
    llama = tmp_path / "llama"
    llama.mkdir()
    for name in ("config.json", "model-00001-of-00002.safetensors", "tokenizer.model"):
        (llama / name).write_text("x")
    for name in ("RadFM_vit3d.pth", "RadFM_perceiver_fc.pth"):
        (tmp_path / name).write_bytes(b"\x80")
    require_weights(all_weights(full_reg2rg(tmp_path)))
