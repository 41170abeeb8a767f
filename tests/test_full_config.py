"""config/full.yaml on data in the real published layouts, run as a user would.

A fake RadGenome-ChestCT tree (NIfTI studies, region masks, region report CSV) plus one
hospital DICOM series, a label-free MABe22 ``mouse_triplet_train.npy`` with 1,800-frame
sequences and a MABe22 test-label file. The config is full.yaml with only what a short
check may shrink (steps, batch, workers, GPUs): every architecture and data shape is the
published one. Snakemake runs from its own working directory with ``-s <repo>/Snakefile``,
and the Reg2RG weights are absent, so Reg2RG must drop out of the default target while
every other family trains, generates, evaluates and draws its figures.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs, run_snakemake

from strata.config import CTDataConfig, DemoCTConfig
from strata.ct.demo import write_demo_ct
from strata.ct.layout import demo_studies
from strata.ct.shards import shard_members
from strata.pose.mabe22_files import write_mabe22_test_labels, write_mabe22_tracks

FULL = yaml.safe_load((REPO / "config" / "full.yaml").read_text())
SNAKEFILE = str(REPO / "Snakefile")
N_SEQUENCES, N_FRAMES = 3, 1800
LABELS = "data/MABe22/mouse_triplets_test_labels.npy"


def full_derived() -> dict:
    """full.yaml with 2 training steps per run, small batches, on the CPU; checkpoints after
    each step for pose runs, after the last for the (ViT-B, 4,096-token) CT run."""
    config = copy.deepcopy(FULL)
    for runs in config["models"].values():
        for run in runs.values():
            ct = run["data"] == "ct"
            run["train"].update(batch_size=1 if ct else 2, total_steps=2, save_every=2 if ct else 1,
                                num_workers=0, gpus=0)
            run["train"]["optim"]["warmup_steps"] = 1
    config["data"]["pose"]["labels"] = LABELS
    config["evaluation"]["generation"]["batch_size"] = 8
    return config


def fake_ct_layout(workdir: Path) -> tuple[CTDataConfig, DemoCTConfig, int]:
    """Where full.yaml's CT data lies under ``workdir``, and the fake studies written there."""
    data = FULL["data"]["ct"]
    ct = CTDataConfig(split=data["split"], nifti_root=workdir / data["nifti_root"], reports=workdir / data["reports"],
                      dicom_root=workdir / data["dicom_root"], dicom_mask_root=workdir / data["dicom_mask_root"])
    return ct, DemoCTConfig(n_nifti=2, n_dicom=1, shape=(96, 96, 40), spacing=(3.25, 3.25, 7.2), noise_hu=15.0), 7


def write_fake_datasets(workdir: Path) -> None:
    """The data folders full.yaml names, in the published layouts, at small sizes."""
    write_demo_ct(*fake_ct_layout(workdir))
    frames = write_mabe22_tracks(workdir / FULL["data"]["pose"]["path"], N_SEQUENCES, N_FRAMES, seed=7)
    write_mabe22_test_labels(workdir / LABELS, frames, seed=7)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A researcher's project folder: data and a config, no copy of the workflow."""
    workdir = tmp_path_factory.mktemp("project")
    write_fake_datasets(workdir)
    (workdir / "full_short.yaml").write_text(yaml.safe_dump(full_derived()))
    return workdir


def snakemake_args(project: Path, *args: str) -> tuple[str, ...]:
    return ("-s", SNAKEFILE, "--directory", str(project), "--configfile", str(project / "full_short.yaml"), *args)


def test_full_config_plans_exactly_its_own_runs(project, tmp_path):
    plan = planned_jobs(tmp_path, *snakemake_args(project))
    assert {k: v for k, v in plan.items() if k.startswith("train_")} == {
        "train_hiera3d": 1, "train_hjepa": 1, "train_posevae": 1}  # full.yaml's runs, none of the demo's
    assert "demo_data_ct" not in plan and "demo_data_pose" not in plan
    shards = yaml.safe_load((project / "full_short.yaml").read_text())["preprocess"]["ct"]["shards"]
    studies = [s.study_id for s in demo_studies(*fake_ct_layout(project))]  # 2 RadGenome NIfTI studies + 1 DICOM series
    assert len(studies) == 3 and plan["preprocess_ct"] == len(shard_members(studies, shards))  # a job per shard in use
    assert not {"reg2rg_tokenizer", "reg2rg_token_cache", "train_reg2rg"} & set(plan)
    # checkpoints of hiera3d, posevae, hjepa, each with step 0 (the initialisation, the random_init baseline)
    assert plan["generate"] == plan["evaluate"] == (2 + 1) + (2 + 1) + (1 + 1)


def test_missing_reg2rg_weights_are_named_and_fail_only_reg2rg(project, tmp_path):
    proc = run_snakemake(tmp_path, *snakemake_args(project, "-n", "--cores", "1"))
    text = proc.stdout + proc.stderr
    assert "Reg2RG is left out of the default target" in text
    assert f"reg2rg.llm.pretrained: {FULL['reg2rg']['llm']['pretrained']} does not exist" in text
    assert "reg2rg.encoder.vit_weights" in text and "RadFM_vit3d.pth" in text


@pytest.mark.slow  # full-size CT preprocessing and ViT-B H-JEPA steps on the CPU (minutes on 2 cores)
@pytest.mark.timeout(3600)
def test_full_config_runs_end_to_end_without_reg2rg_weights(project, tmp_path):
    run_snakemake(tmp_path, *snakemake_args(project, "--cores", "2"), timeout=3000)
    results = project / "results"
    summary = pd.read_parquet(results / "summary" / "metrics.parquet")
    assert set(zip(summary["family"], summary["run"])) == {("hiera3d", "pose"), ("hjepa", "ct"), ("posevae", "pose")}
    hiera3d = summary[summary["family"] == "hiera3d"]
    tasks = [c for c in summary.columns if c.startswith(("task_f1/", "task_mse/")) and "@L" in c]
    assert tasks and hiera3d[tasks].notna().all().all(), "the MABe22 label file's tasks were not probed per level"
    assert summary.loc[summary["family"] == "posevae", ["recon_mse", "kl"]].notna().all().all()
    for family, run in (("hiera3d", "pose"), ("hjepa", "ct"), ("posevae", "pose")):
        assert list((results / "figures" / family / run).glob("*.png")), f"no figures for {family}/{run}"
    assert not (results / "reg2rg").exists()
    # asked for by name, Reg2RG's first rule fails naming the key; nothing else re-runs
    proc = run_snakemake(tmp_path, *snakemake_args(project, "--cores", "1", "results/reg2rg/tokenizer"), check=False)
    assert proc.returncode != 0
    log = (results / "logs" / "reg2rg_tokenizer.log").read_text()
    assert f"reg2rg.tokenizer.pretrained: {FULL['reg2rg']['tokenizer']['pretrained']} does not exist" in log
