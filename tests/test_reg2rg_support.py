"""Shared helpers of the Reg2RG tests (fixtures and builders; no tests here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from strata.config import from_dict
from strata.ct.demo_plan import DemoFindings, region_sentences
from strata.ct.regions import REGIONS
from strata.io.tensor_files import save_tensors
from strata.reg2rg.config import Reg2RGConfig

REPO = Path(__file__).resolve().parents[1]


def raw_demo_section() -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return copy.deepcopy(raw["reg2rg"])


def demo_config(**changes: Any) -> Reg2RGConfig:
    """The demo ``reg2rg`` section with ``changes`` given as dotted keys (``train.epochs=1``)."""
    raw = raw_demo_section()
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return from_dict(Reg2RGConfig, raw, where="reg2rg")


def write_fake_ct_cache(root: Path, n: int = 3, seed: int = 0, absent: tuple[str, ...] = ("thyroid",)
                        ) -> tuple[Path, Path, list[str]]:
    """Cached CT tensors (demo shapes, random intensities) and a report table for ``n`` studies.

    Study 0 lacks the regions in ``absent``. Returns (studies dir, reports parquet, study ids).
    """
    rng = np.random.default_rng(seed)
    studies, rows, ids = root / "studies", [], []
    for i in range(n):
        sid = f"train_{i + 1}_a_1"
        findings = DemoFindings(nodule_mm=(0, 12, 24)[i % 3], nodule_side="left", cardiomegaly=bool(i % 2),
                                effusion="none")
        regions = tuple(r for r in REGIONS if not (i == 0 and r in absent))
        present = torch.tensor([r in regions for r in REGIONS], dtype=torch.uint8)
        crops = torch.from_numpy(rng.random((10, 1, 32, 32, 16), dtype=np.float32)) * present[:, None, None, None, None]
        masks = (torch.from_numpy(rng.random((10, 32, 32, 16))) > 0.5).to(torch.uint8) * present[:, None, None, None]
        save_tensors({"image": torch.from_numpy(rng.random((1, 64, 64, 32), dtype=np.float32)),
                      "masks": torch.zeros((10, 64, 64, 32), dtype=torch.uint8),
                      "region_images": crops, "region_masks": masks, "region_present": present,
                      "affine": torch.eye(4, dtype=torch.float64)},
                     studies / f"{sid}.safetensors", metadata={"study_id": sid, "params_sha256": "test"})
        sentences = region_sentences(findings, regions)
        rows.append({"study_id": sid, "region": "", "sentence": " ".join(sentences.values())})
        rows += [{"study_id": sid, "region": r, "sentence": s} for r, s in sentences.items()]
        ids.append(sid)
    reports = root / "reports.parquet"
    pd.DataFrame(rows).to_parquet(reports, index=False)
    return studies, reports, ids


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory) -> dict[str, Any]:
    """Fake CT cache + the tokenizer, token cache and config the Reg2RG stages make from it."""
    from strata.models.reg2rg import build_encoders
    from strata.reg2rg.token_cache import module_sha256, run_token_cache
    from strata.reg2rg.tokenizer import build_tokenizer, load_tokenizer

    root = tmp_path_factory.mktemp("reg2rg")
    studies, reports, ids = write_fake_ct_cache(root)
    cfg = demo_config()
    build_tokenizer(cfg.tokenizer, pd.read_parquet(reports), cfg.perceiver.num_latents, root / "tokenizer")
    tokenizer, layout = load_tokenizer(root / "tokenizer", cfg.perceiver.num_latents)
    encoders = build_encoders(cfg.encoder, 1234)
    sha = module_sha256(encoders)
    for sid in ids:
        run_token_cache(encoders, sha, studies / f"{sid}.safetensors", root / "tokens" / f"{sid}.safetensors",
                        torch.float32)
    return {"root": root, "studies": studies, "reports": reports, "ids": ids, "cfg": cfg, "tokenizer": tokenizer,
            "layout": layout, "tokens": root / "tokens", "encoder_sha": sha}
