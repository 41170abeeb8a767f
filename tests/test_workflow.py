"""The real Snakefile on config/test.yaml (the demo DAG at test sizes): caching, targeted
re-runs, reproducibility. Every Snakemake call names it by --configfile, which is the whole
config (the embedded demo default is not read)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from conftest import TEST_CONFIG, copy_workflow, planned_jobs, run_snakemake
from scipy.ndimage import binary_erosion

from strata.config import StrataConfig, from_dict
from strata.ct.cache_format import read_study
from strata.ct.demo_plan import demo_plan, nodule_size_class
from strata.ct.regions import REGION_INDEX
from strata.ct.shards import shard_members

BASE = yaml.safe_load(TEST_CONFIG.read_text())
CFG = from_dict(StrataConfig, BASE)
PLANS = demo_plan(CFG.data.ct, CFG.demo.ct, CFG.seed)
STUDY_IDS = [p.study_id for p in PLANS]
CT_SHARDS = shard_members(STUDY_IDS, CFG.preprocess.ct.shards)


DATA_TARGETS = ("results/cache/ct/manifest.parquet", "results/cache/ct/reports.parquet",
                "results/cache/pose/manifest.parquet")


def data_stage_files(workdir: Path) -> dict[str, bytes]:
    """Every file the data stages wrote (demo data and caches), by relative path."""
    roots = [workdir / "data", workdir / "results" / "cache"]
    return {str(p.relative_to(workdir)): p.read_bytes() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def configfile(workdir: Path) -> str:
    """The workflow copy's config/test.yaml."""
    return str(workdir / "config" / TEST_CONFIG.name)


def plan(workdir: Path, *args: str, config: str | None = None) -> dict[str, int]:
    """``planned_jobs`` on the test config (or ``config``); --configfile goes last, as it takes
    several values."""
    return planned_jobs(workdir, *args, "--configfile", config or configfile(workdir))


def run(workdir: Path, *args: str):
    """``run_snakemake`` on the test config."""
    return run_snakemake(workdir, *args, "--configfile", configfile(workdir))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("demo_run"))
    run(workdir, "--cores", "2")
    return workdir


def override(workdir: Path, name: str, **edits: object) -> str:
    """Write the test config with ``a__b=value`` edits; returns its path for --configfile."""
    config = copy.deepcopy(BASE)
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_nothing_to_do_after_a_full_run(demo_run):
    assert plan(demo_run) == {}


def test_training_jobs_are_watchable_and_a_monitor_change_retrains_nothing(demo_run):
    """Progress lines in the rule logs, the live step log beside the outputs; ``monitor`` is
    read from the workflow config, never a rule's params, so changing it plans no job."""
    log = (demo_run / "results" / "logs" / "train_hiera3d" / "pose.log").read_text()
    total, every = CFG.models["hiera3d"]["pose"].train.total_steps, CFG.monitor.log_every
    assert "training hiera3d/pose on cpu, fp32" in log and f"hiera3d/pose step {total}/{total} (100%)" in log
    live = pd.read_parquet(demo_run / "results" / "hiera3d" / "pose" / "live_log.parquet")
    assert live["step"].tolist() == list(range(every, total + 1, every))
    reg2rg_log = (demo_run / "results" / "logs" / "train_reg2rg" / f"{CFG.reg2rg.run}.log").read_text()
    assert f"reg2rg/{CFG.reg2rg.run} step " in reg2rg_log
    changed = override(demo_run, "monitor", monitor={"log_every": 3, "tensorboard": True})
    assert plan(demo_run, config=changed) == {}


CT_ONLY_RULES = {"demo_data_ct", "preprocess_ct", "ct_manifest", "preprocess_reports", "reg2rg_tokenizer",
                 "reg2rg_token_cache", "train_reg2rg"}
POSE_ONLY_RULES = {"demo_data_pose", "preprocess_pose", "train_posevae", "figures_posevae"}


def runs_on(data: str) -> dict[str, int]:
    """train_<family> -> number of configured runs of that family on ``data``."""
    counts = {f"train_{family}": sum(run.data == data for run in runs.values())
              for family, runs in CFG.models.items()}
    return {rule: n for rule, n in counts.items() if n}


SUMMARY_RULES = {"summarize", "verdict", "all"}  # one job each over every run's metrics
EMBEDDING_FIGURE_RULES = ("figures", "figures_probes")  # one job each per embedding run


def upstream(jobs: dict[str, int]) -> dict[str, int]:
    """The plan without the per-checkpoint stages that follow every training."""
    return {k: v for k, v in jobs.items()
            if k not in {"generate", "evaluate", *EMBEDDING_FIGURE_RULES, "figures_posevae", "figures_reg2rg",
                         *SUMMARY_RULES}}


def test_pose_only_change_reruns_only_pose_rules(demo_run):
    cfg = override(demo_run, "pose_stride", preprocess__pose__stride=CFG.preprocess.pose.stride // 2)
    jobs = plan(demo_run, config=cfg)
    assert upstream(jobs) == {"preprocess_pose": 1, **runs_on("pose")}
    assert not CT_ONLY_RULES & set(jobs)
    cfg = override(demo_run, "pose_demo", demo__pose__n_frames=CFG.demo.pose.n_frames + 32)
    jobs = plan(demo_run, config=cfg)
    assert upstream(jobs) == {"demo_data_pose": 1, "preprocess_pose": 1, **runs_on("pose")}


def test_ct_only_change_reruns_only_ct_rules(demo_run):
    other = {"float16": "float32", "float32": "float16"}[CFG.preprocess.ct.dtype]
    cfg = override(demo_run, "ct_dtype", preprocess__ct__dtype=other)
    n = len(CT_SHARDS)  # one job per shard of studies
    jobs = plan(demo_run, config=cfg)
    assert upstream(jobs) == {"ct_manifest": 1, "preprocess_ct": n, "reg2rg_token_cache": n, "train_reg2rg": 1,
                              **runs_on("ct")}
    assert not POSE_ONLY_RULES & set(jobs)


def test_one_model_config_change_reruns_only_that_models_chain(demo_run):
    beta = BASE["models"]["posevae"]["pose"]["architecture"]["beta"]
    cfg = override(demo_run, "posevae_beta", models__posevae__pose__architecture__beta=2 * beta + 1.0e-3)
    jobs = plan(demo_run, config=cfg)
    assert upstream(jobs) == {"train_posevae": 1}
    steps = len(CFG.models["posevae"]["pose"].train.checkpoint_steps())
    assert jobs["generate"] == jobs["evaluate"] == steps and jobs["figures_posevae"] == 1


def test_manifests_and_caches(demo_run):
    manifest = pd.read_parquet(demo_run / "results/cache/ct/manifest.parquet")
    assert manifest["study_id"].tolist() == sorted(p.study_id for p in PLANS)
    by_id = manifest.set_index("study_id")
    for study in PLANS:
        row = by_id.loc[study.study_id]
        assert row["kind"] == study.kind
        assert row["regions_present"].tolist() == list(study.regions)
        assert row["n_files"] == (1 if study.kind == "nifti" else CFG.demo.ct.shape[2])
        assert row["warnings"].tolist() == []
    reports = pd.read_parquet(demo_run / "results/cache/ct/reports.parquet")
    assert set(reports["study_id"]) == set(by_id.index)
    assert (reports.groupby("study_id").size() == by_id["regions_present"].map(len) + 1).all()
    pose = pd.read_parquet(demo_run / "results/cache/pose/manifest.parquet")
    assert len(pose) > 0 and set(pose["label"]) >= {0, 1, 2}


def test_cached_ct_carries_the_stated_nodule(demo_run):
    """The learnable signal survives preprocessing: dense voxels deep inside the lung mask
    are many more for studies whose lung sentence states a large nodule than for none."""
    dense = {}
    for study in PLANS:
        tensors = read_study(demo_run / f"results/cache/ct/studies/{study.study_id}.safetensors")
        lung = binary_erosion(tensors["masks"][REGION_INDEX["lung"]].numpy().astype(bool))
        image = tensors["image"][0].float().numpy()
        dense[study.study_id] = int((image[lung] > 0.5).sum())  # > -400 HU
    size = {p.study_id: nodule_size_class(p.findings.nodule_mm) for p in PLANS}
    large = [v for k, v in dense.items() if size[k] == "large"]
    none = [v for k, v in dense.items() if size[k] == "none"]
    assert min(large) > 2 * max(max(none), 1), dense


def test_modifying_one_dicom_file_reruns_only_that_studys_shard(demo_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(demo_run, workdir, symlinks=True)  # copy2 keeps mtimes: still up to date
    assert plan(workdir) == {}
    study = next(p for p in PLANS if p.kind == "dicom")
    slice_path = workdir / CFG.data.ct.dicom_root / study.study_id / "slice_0010.dcm"
    ds = pydicom.dcmread(slice_path)
    pixels = ds.pixel_array.copy()
    pixels[10:20, 10:20] += 100
    ds.PixelData = pixels.tobytes()
    ds.save_as(slice_path)
    assert upstream(plan(workdir)) == {"ct_manifest": 1, "preprocess_ct": 1, "reg2rg_token_cache": 1,
                                       "train_reg2rg": 1, **runs_on("ct")}
    shard = next(name for name, ids in CT_SHARDS.items() if study.study_id in ids)
    caches = {sid: workdir / f"results/cache/ct/studies/{sid}.safetensors" for sid in sorted(STUDY_IDS)}
    before = {sid: path.stat().st_mtime_ns for sid, path in caches.items()}
    proc = run(workdir, "--cores", "2", *DATA_TARGETS)
    assert f"rule preprocess_ct_{shard}:" in proc.stderr + proc.stdout
    rebuilt = {sid for sid, path in caches.items() if path.stat().st_mtime_ns != before[sid]}
    assert rebuilt == set(CT_SHARDS[shard])  # the other shards' caches were not touched
    assert plan(workdir, *DATA_TARGETS) == {}


def test_a_deleted_study_cache_is_rebuilt_and_its_readers_rerun(demo_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(demo_run, workdir, symlinks=True)
    study = min(STUDY_IDS)
    (workdir / f"results/cache/ct/studies/{study}.safetensors").unlink()
    assert upstream(plan(workdir)) == {"ct_manifest": 1, "preprocess_ct": 1, "reg2rg_token_cache": 1,
                                       "train_reg2rg": 1, **runs_on("ct")}


def test_data_stages_are_byte_reproducible(demo_run, tmp_path_factory):
    """A second run from scratch writes byte-identical demo data, caches and manifests."""
    again = copy_workflow(tmp_path_factory.mktemp("demo_run_again"))
    run(again, "--cores", "2", *DATA_TARGETS)
    first, second = data_stage_files(demo_run), data_stage_files(again)
    assert len(first) > 100 and sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []


# --------------------------------------------------------------------------- re-running single stages


def test_forcerun_one_training_reruns_it_and_its_downstream_only(demo_run):
    """``--forcerun train_posevae`` plans that training and what follows from its checkpoints:
    the same jobs as a change of the pose VAE's own config, nothing upstream, no other model."""
    jobs = plan(demo_run, "--forcerun", "train_posevae")
    assert upstream(jobs) == {"train_posevae": 1}
    lr = CFG.models["posevae"]["pose"].train.optim.lr
    cfg = override(demo_run, "posevae_lr", models__posevae__pose__train__optim__lr=lr / 2)
    assert jobs == plan(demo_run, config=cfg)


def _last_checkpoint_metrics(family: str, run: str) -> str:
    step = CFG.models[family][run].train.checkpoint_steps()[-1]
    return f"results/{family}/{run}/evaluate/{step}/metrics.parquet"


def test_one_evaluation_target_builds_only_what_it_needs(tmp_path):
    workdir = copy_workflow(tmp_path)
    jobs = plan(workdir, _last_checkpoint_metrics("posevae", "pose"))
    assert jobs == {"demo_data_pose": 1, "preprocess_pose": 1, "train_posevae": 1, "generate": 1, "evaluate": 1}


def test_one_evaluation_target_is_up_to_date_after_a_full_run(demo_run):
    assert plan(demo_run, _last_checkpoint_metrics("hiera3d", "pose")) == {}


def test_until_preprocess_ct_stops_there(tmp_path):
    workdir = copy_workflow(tmp_path)
    shard_rules = [f"preprocess_ct_{name}" for name in CT_SHARDS]
    assert plan(workdir, "--until", *shard_rules) == {"demo_data_ct": 1, "preprocess_ct": len(CT_SHARDS)}


def test_shards_hold_every_study_once_and_stay_put_when_studies_are_added():
    """Each study is in exactly one shard; a new study moves no other (only its shard re-runs)."""
    assert sorted(sid for ids in CT_SHARDS.values() for sid in ids) == sorted(STUDY_IDS)
    grown = shard_members([*STUDY_IDS, "train_999_a_1"], CFG.preprocess.ct.shards)
    for name, ids in CT_SHARDS.items():
        assert [sid for sid in grown[name] if sid != "train_999_a_1"] == ids


def test_reg2rg_reports_and_metrics_of_held_out_studies(demo_run):
    """Every Reg2RG epoch is generated and scored on the held-out studies, which it never trained on."""
    import json

    from strata.reg2rg.split import held_out_studies

    held_out = held_out_studies([p.study_id for p in PLANS], CFG.reg2rg.split)
    epochs = CFG.reg2rg.train.checkpoint_epochs()
    run = demo_run / "results" / "reg2rg" / CFG.reg2rg.run
    trained = json.loads((run / "checkpoints" / str(epochs[-1]) / "meta.json").read_text())["data_sha256"]
    assert held_out and not set(held_out) & set(trained)
    for epoch in epochs:
        out = pd.read_parquet(run / "generate" / str(epoch) / "outputs.parquet")
        if "control" in out:  # controls (the same studies, altered inputs) are further rows
            out = out[out["control"] == ""]
        assert sorted(out.loc[out["region"] == "", "study_id"]) == held_out
        assert json.loads(out["decoding"].iloc[0])["max_new_tokens"] == CFG.reg2rg.generation.max_new_tokens
    summary = pd.read_parquet(demo_run / "results" / "summary" / "metrics.parquet")
    reg2rg = summary[summary["family"] == "reg2rg"]
    assert reg2rg["step"].tolist() == epochs
    for name in ("bleu1", "bleu4", "meteor", "rouge_l"):
        assert reg2rg[name].between(0, 1).all() and reg2rg[f"{name}_corpus"].between(0, 1).all()
    assert reg2rg["finding_accuracy"].between(0, 1).all()
    assert (reg2rg["n_studies"] == len(held_out)).all()
    assert (demo_run / "results" / "figures" / "reg2rg" / CFG.reg2rg.run / "reports.png").is_file()


def test_reg2rg_decoding_change_regenerates_without_retraining(demo_run):
    tokens = CFG.reg2rg.generation.max_new_tokens + 8
    jobs = plan(demo_run, config=override(demo_run, "reg2rg_decoding", reg2rg__generation__max_new_tokens=tokens))
    epochs = len(CFG.reg2rg.train.checkpoint_epochs())
    assert "train_reg2rg" not in jobs and jobs["generate"] == jobs["evaluate"] == epochs, jobs


def test_a_pose_label_file_reevaluates_only_the_pose_embedding_runs(demo_run):
    """``data.pose.labels`` is an input of the pose embedding runs' evaluate jobs only: another
    label file re-plans their evaluation, the summary and their figures; nothing is retrained
    or regenerated, and the pose VAE and CT runs are untouched."""
    from strata.pose.mabe22_files import write_mabe22_test_labels

    labels = demo_run / "labels" / "mouse_triplets_test_labels.npy"  # outside data/ (byte-compared above)
    pose = CFG.demo.pose
    write_mabe22_test_labels(labels, {f"seq{i:04d}": pose.n_frames for i in range(pose.n_sequences)}, seed=0)
    jobs = plan(demo_run, config=override(demo_run, "pose_labels", data__pose__labels=str(labels)))
    pose_runs = [(f, r) for f in ("hiera3d", "hjepa") for r, run in CFG.models[f].items() if run.data == "pose"]
    steps = sum(len(CFG.models[f][r].train.checkpoint_steps()) for f, r in pose_runs)
    summary = {k: v for k, v in jobs.items() if k in SUMMARY_RULES}
    assert {k: v for k, v in jobs.items() if k not in SUMMARY_RULES} == {
        "evaluate": steps, **{rule: len(pose_runs) for rule in EMBEDDING_FIGURE_RULES}}, jobs
    assert summary.get("summarize") == 1 and set(summary.values()) == {1}, jobs
