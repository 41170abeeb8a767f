"""Shared test helpers: a copy of the real workflow to run Snakemake in, small CT studies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strata.config import CTPreprocessConfig
from strata.ct.demo import lps_affine, phantom, write_dicom_series, write_nifti
from strata.ct.demo_plan import DemoFindings
from strata.ct.layout import dicom_slice_name
from strata.ct.regions import REGIONS, mask_file_name

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "config", "envs", "report")


def copy_workflow(dest: Path) -> Path:
    """Copy the real Snakefile, rules, entry points and configs into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the snakemake CLI of this environment in ``workdir``; output is captured as text."""
    proc = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


SHARD_RULE = re.compile(r"^(preprocess_ct|reg2rg_token_cache)_\d+$")


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that ``snakemake -n`` would run (from its job-stats table); the
    per-shard rules count under their stage's name (preprocess_ct: one job per shard)."""
    proc = run_snakemake(workdir, "-n", "--cores", "1", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    counts: dict[str, int] = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        rule = SHARD_RULE.sub(r"\1", parts[0])
        counts[rule] = counts.get(rule, 0) + int(parts[1])
    return counts


# --------------------------------------------------------------------------- small CT studies

SMALL_SHAPE = (24, 24, 12)
SMALL_SPACING = (13.0, 13.0, 24.0)  # the 312 x 312 x 288 mm demo field of view at low resolution


def small_ct_config(**changes: object) -> CTPreprocessConfig:
    values: dict = {"spacing": (15.0, 15.0, 28.0), "shape": (16, 16, 8), "region_shape": (8, 8, 4), "channels": 1,
                    "hu_window": (-1000.0, 200.0), "out_range": (0.0, 1.0), "outside_hu": -1024.0, "dtype": "float32",
                    "on_missing_slice": "error", "multiple_series": "error", "spacing_tolerance": 0.01,
                    "on_missing_rescale": "error", "max_voxel_mm": 30.0, "max_extent_mm": 2000.0, "shards": 1}
    values.update(changes)
    return CTPreprocessConfig(**values)


@dataclass
class SmallStudy:
    """A small written study plus where its outputs would go."""

    kind: str
    files: list[Path]
    masks: dict[str, Path]
    hu: np.ndarray
    cache_file: Path
    row_file: Path

    def outputs_left(self) -> list[Path]:
        """Anything written under the output folder (final files or temporary leftovers)."""
        out = self.cache_file.parent.parent
        return sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []


def write_small_study(root: Path, kind: str, study_id: str = "s1", seed: int = 0,
                      shape: tuple[int, int, int] = SMALL_SHAPE) -> SmallStudy:
    rng = np.random.default_rng(seed)
    findings = DemoFindings(nodule_mm=30, nodule_side="left", cardiomegaly=False, effusion="none")
    hu, masks = phantom(shape, SMALL_SPACING, findings, REGIONS, 10.0, rng)
    affine = lps_affine(shape, SMALL_SPACING)
    if kind == "dicom":
        files = write_dicom_series(hu, SMALL_SPACING, root / "dicom" / study_id, study_id, seed, dicom_slice_name)
    else:
        files = [root / "nifti" / f"{study_id}.nii.gz"]
        write_nifti(np.round(hu), affine, files[0], np.int16)
    mask_paths = {}
    for region, mask in masks.items():
        mask_paths[region] = root / f"masks_{kind}" / f"seg_{study_id}" / mask_file_name(region)
        write_nifti(mask, affine, mask_paths[region], np.uint8)
    out = root / "out"
    return SmallStudy(kind, files, mask_paths, np.round(hu), out / "studies" / f"{study_id}.safetensors",
                      out / "rows" / f"{study_id}.parquet")


@pytest.fixture
def dicom_study(tmp_path: Path) -> SmallStudy:
    return write_small_study(tmp_path, "dicom")


@pytest.fixture
def nifti_study(tmp_path: Path) -> SmallStudy:
    return write_small_study(tmp_path, "nifti")


# --------------------------------------------------------------------------- cached features

DEFAULT_CONFIG = REPO / "config" / "config.yaml"
# the demo DAG at test sizes (every rule, a few steps): the workflow tests run it by --configfile
TEST_CONFIG = REPO / "config" / "test.yaml"


@pytest.fixture(scope="session")
def pose_cache(tmp_path_factory) -> Path:
    """``<cache>/pose/{shards,manifest.parquet}`` made by the real pose stages from the demo config."""
    from strata.config import load_config
    from strata.pose.demo import write_demo_pose
    from strata.pose.stage import preprocess_pose

    cfg = load_config(DEFAULT_CONFIG)
    root = tmp_path_factory.mktemp("pose_cache")
    npy = root / "demo" / "mouse_triplet_train.npy"
    write_demo_pose(cfg.demo.pose, cfg.seed, npy, npy.with_suffix(".parquet"))
    preprocess_pose(cfg.preprocess.pose, npy, root / "cache" / "pose" / "shards", root / "cache" / "pose" / "manifest.parquet")
    return root / "cache"
