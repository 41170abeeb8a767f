"""Generate / evaluate / summary stages: targets, resumable parts, probes, VAE metrics,
and the per-family generators on tiny checkpoints over the real demo pose cache."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from strata.config import read_yaml
from strata.evaluation.config import (
    BestCheckpoint,
    GenerationConfig,
    PoseVAEGenerationConfig,
    ProbeConfig,
)
from strata.evaluation.data import held_out_sequences, pose_test_mask
from strata.evaluation.embeddings import frame_map
from strata.evaluation.evaluate import EvaluateJob, evaluate
from strata.evaluation.generate import GenerateJob, fingerprint, generate
from strata.evaluation.parts import ChunkedParquet
from strata.evaluation.posevae import (
    border_mse_ratio,
    copy_previous,
    keyframe_interpolation,
    pca_reconstruction,
    prior_statistics,
    vae_metrics,
)
from strata.evaluation.summary import best_checkpoints, markdown, wide_table
from strata.evaluation.targets import evaluate_targets, figure_targets, model_checkpoints
from strata.io.atomic import write_parquet
from strata.io.tensor_files import save_tensors
from strata.models.registry import build_model

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture (tiny Reg2RG token cache)

REPO = Path(__file__).resolve().parents[1]
CONFIG = read_yaml(REPO / "config" / "config.yaml")
ALPHAS = (0.1, 1.0, 10.0, 100.0)
PROBE = ProbeConfig(ALPHAS, folds=4, validation_fraction=0.2, bootstrap=200, pose_test_sequences=2)
GENERATION = GenerationConfig(64, 8, PoseVAEGenerationConfig(3, 4, 0))
EMBEDDING_STATS = ("embedding_std", "embedding_norm", "embedding_effective_rank")

TINY_CT_HIERA = {"input_size": [16, 16, 8], "in_channels": 1, "patch_size": [4, 4, 2], "embed_dim": 8,
                 "num_heads": 1, "stages": [1, 1], "q_strides": [[2, 2, 2]], "mask_unit_attn": [True, False],
                 "mlp_ratio": 2.0, "out_embed_dims": [8, 16], "decoder_embed_dim": 8, "decoder_depth": 1,
                 "decoder_num_heads": 1, "mask_ratio": 0.5, "norm_pix_loss": False}


@pytest.fixture(scope="module")
def pose_cache(tmp_path_factory) -> Path:
    """``<cache>/pose`` made by the real pose stages from a 5-sequence demo (built from the
    config sections directly, independent of the top-level config class)."""
    from strata.config import DemoPoseConfig, PosePreprocessConfig, from_dict
    from strata.pose.demo import write_demo_pose
    from strata.pose.stage import preprocess_pose

    demo = from_dict(DemoPoseConfig, dict(CONFIG["demo"]["pose"], n_sequences=5))
    root = tmp_path_factory.mktemp("eval_pose")
    npy = root / "demo" / "mouse_triplet_train.npy"
    write_demo_pose(demo, CONFIG["seed"], npy, npy.with_suffix(".parquet"))
    preprocess_pose(from_dict(PosePreprocessConfig, CONFIG["preprocess"]["pose"]), npy,
                    root / "cache" / "pose" / "shards", root / "cache" / "pose" / "manifest.parquet")
    return root / "cache"


def write_checkpoint(root: Path, family: str, architecture: dict, step: int = 1, seed: int = 0) -> Path:
    """A checkpoints/<step>/model.safetensors of a freshly initialised model (as training writes it)."""
    torch.manual_seed(seed)
    model = build_model(family, architecture)
    save_tensors(model.state_dict(), root / "checkpoints" / str(step) / "model.safetensors",
                 metadata={"architecture": architecture})
    return root / "checkpoints"


def pose_architecture(family: str) -> dict:
    return copy.deepcopy(CONFIG["models"][family]["pose"]["architecture"])


def gen_job(tmp: Path, family: str, data: str, checkpoints: Path, cache: Path,
            generation: GenerationConfig = GENERATION) -> GenerateJob:
    return GenerateJob(family=family, data=data, checkpoints=checkpoints, step=1, cache_dir=cache,
                       output=tmp / "generate" / "1" / "outputs.parquet", work_dir=tmp / "generate" / ".work-1",
                       generation=generation, pose_test_sequences=2)


# --------------------------------------------------------------------------- pure helpers


def test_targets_follow_the_checkpoint_schedule():
    models = {"posevae": {"a": {"train": dict(CONFIG["models"]["posevae"]["pose"]["train"], total_steps=120,
                                              save_every=50)}}}
    # step 0: the seeded random initialisation, every run's baseline
    assert model_checkpoints(models) == [("posevae", "a", s) for s in (0, 50, 100, 120)]
    assert evaluate_targets(models)[-1] == "results/posevae/a/evaluate/120/metrics.parquet"
    assert "results/figures/posevae/a/samples.png" in figure_targets(models)


def test_pose_split_holds_out_the_last_sequences_in_sorted_order():
    table = pd.DataFrame({"sequence": ["s2", "s0", "s10", "s1", "s2"]})
    assert held_out_sequences(table["sequence"], 2) == ["s10", "s2"]
    assert pose_test_mask(table, 2).tolist() == [True, False, True, False, True]
    assert held_out_sequences(["a", "b"], 5) == ["b"]  # one sequence always stays for training


def test_frame_map_sends_frames_to_their_time_token():
    assert frame_map(64, 8, torch.tensor([0, 7, 8, 63])).tolist() == [0, 0, 1, 7]
    with pytest.raises(ValueError, match="do not split"):
        frame_map(64, 6, torch.tensor([0]))


def test_chunked_parquet_skips_written_parts_and_drops_stale_ones(tmp_path):
    calls = []

    def chunk(i):
        calls.append(i)
        return pd.DataFrame({"i": [i, i]})

    parts = ChunkedParquet(tmp_path / "work", "fp1")
    parts.run(0, lambda: chunk(0))
    with pytest.raises(RuntimeError):
        parts.run(1, lambda: (_ for _ in ()).throw(RuntimeError("killed")))  # job dies in chunk 1
    parts = ChunkedParquet(tmp_path / "work", "fp1")  # the re-run
    for i in range(3):
        parts.run(i, lambda i=i: chunk(i))
    assert calls == [0, 1, 2]  # chunk 0 not recomputed
    merged = parts.merge(3, tmp_path / "out.parquet")
    assert merged["i"].tolist() == [0, 0, 1, 1, 2, 2] and not (tmp_path / "work").exists()
    parts = ChunkedParquet(tmp_path / "work", "fp1")
    parts.run(0, lambda: chunk(0))
    ChunkedParquet(tmp_path / "work", "fp2")  # other weights: old parts are discarded
    assert not (tmp_path / "work" / "part-000000.parquet").exists()


def test_vae_metrics_by_hand():
    x = np.zeros((1, 2, 2))
    recon = np.array([[[1.0, 2.0], [3.0, 100.0]]])
    valid = np.array([[[1, 1], [1, 0]]])  # the 100 is on a missing keypoint
    mu = np.array([[[1.0, 0.0], [-1.0, 0.0]]])  # 2 chunks, 2 latent dims
    logvar = np.zeros_like(mu)
    m = vae_metrics(recon, x, valid, mu, logvar)
    assert m["recon_mse"] == pytest.approx((1 + 4 + 9) / 3)
    assert m["kl"] == pytest.approx(0.5)  # per chunk: 0.5 * 1^2, summed over dims, mean over chunks
    assert m["active_units"] == 1.0  # dim 0 varies (variance 1 > 0.01), dim 1 does not


def test_posevae_baselines_by_hand():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 8 * 4))  # windows [T=8, F=4] spanning 3 directions
    train = (rng.normal(size=(20, 3)) @ basis).reshape(20, 8, 4)
    test = (rng.normal(size=(5, 3)) @ basis).reshape(5, 8, 4)
    np.testing.assert_allclose(pca_reconstruction(train, test, 3), test, atol=1e-8)  # full budget: exact
    assert np.abs(pca_reconstruction(train, test, 1) - test).max() > 0.1  # a smaller one is not
    constant = np.broadcast_to(rng.normal(size=(2, 1, 4)), (2, 8, 4))
    assert np.abs(copy_previous(constant) - constant).max() == 0.0
    ramp = np.arange(8.0)[None, :, None] * np.ones((2, 1, 4))
    assert (copy_previous(ramp)[0, :, 0] == [0, 0, 1, 2, 3, 4, 5, 6]).all()  # frame 0 copied
    linear = 2.0 + 0.5 * ramp * rng.normal(size=(2, 1, 4))  # linear motion: key frames 0, 3, 6, 7
    np.testing.assert_allclose(keyframe_interpolation(linear, 3), linear)
    bent = linear ** 2
    key = keyframe_interpolation(bent, 3)
    np.testing.assert_allclose(key[:, [0, 3, 6, 7]], bent[:, [0, 3, 6, 7]])  # key frames kept
    assert np.abs(key - bent).max() > 0.1  # the frames between are interpolated


def test_posevae_border_ratio_and_prior_statistics_by_hand():
    x, valid = np.zeros((1, 8, 2)), np.ones((1, 8, 2))
    recon = np.ones((1, 8, 2))
    recon[:, [3, 4]] = 2.0  # chunk_len 4: frames 3 and 4 meet at the border
    assert border_mse_ratio(recon, x, valid, 4) == pytest.approx(4.0)
    assert border_mse_ratio(np.ones((1, 8, 2)), x, valid, 4) == pytest.approx(1.0)
    # one agent of 12 keypoints: nose at x = 1, tail_base at x = -1, ears at y = +-0.2;
    # the centre moves 0.1 per frame (in feature units; 10 px per unit)
    body = np.zeros((12, 2))
    body[0], body[9], body[1], body[2] = (1, 0), (-1, 0), (0, 0.2), (0, -0.2)
    steps = np.arange(5.0)[:, None, None] * np.array([0.1, 0.0])
    data = (body[None] + steps).reshape(1, 5, 24)
    prior = data * np.array([2.0, 1.0] * 12)  # x doubled: body 40 px, speed 2 px (out of range); ears kept
    stats = prior_statistics(prior, data, np.ones_like(data), px_per_unit=10.0)
    assert stats["data_body_length_px"] == pytest.approx(20.0) and stats["prior_body_length_px"] == pytest.approx(40.0)
    assert stats["prior_body_length_in_range"] == 0.0
    assert stats["data_ear_gap_px_p05"] == pytest.approx(4.0) and stats["prior_ear_gap_in_range"] == 1.0
    assert stats["data_speed_px"] == pytest.approx(1.0) and stats["prior_speed_px"] == pytest.approx(2.0)


def test_summary_picks_the_best_checkpoint_in_the_configured_direction():
    long = pd.DataFrame([
        ("posevae", "p", 1, "all", "recon_mse", 0.5), ("posevae", "p", 2, "all", "recon_mse", 0.2),
        ("posevae", "p", 3, "all", "recon_mse", 0.2),
        ("hjepa", "c", 1, "0", "probe_macro_f1", 0.6), ("hjepa", "c", 1, "1", "probe_macro_f1", 0.8),
        ("hjepa", "c", 2, "0", "probe_macro_f1", 0.5), ("hjepa", "c", 2, "1", "probe_macro_f1", 0.5),
    ], columns=["family", "run", "step", "level", "metric", "value"]).assign(model="trained")
    wide = wide_table(long)
    assert wide.loc[wide["step"].eq(1) & wide["family"].eq("hjepa"), "probe_macro_f1"].item() == pytest.approx(0.7)
    assert "probe_macro_f1@L1" in wide
    best = best_checkpoints(wide, {"posevae": BestCheckpoint("recon_mse", False),
                                   "hjepa": BestCheckpoint("probe_macro_f1", True)}).set_index("family")
    assert best.loc["posevae", "step"] == 2  # lower is better; tie -> the earlier step
    assert best.loc["hjepa", "step"] == 1
    md = markdown(wide, best.reset_index())
    assert "| posevae | p | 2 | recon_mse |" in md  # the best-checkpoint table
    posevae = md.split("### posevae / p")[1].split("###")[0]
    assert posevae.splitlines()[2] == "| metric | step 1 | step 2 | step 3 |"  # one column per checkpoint
    assert "| recon_mse | 0.5 | 0.2 | 0.2 |" in posevae and "probe_macro_f1" not in posevae
    assert "probe_macro_f1@L1" not in md.split("### hjepa / c")[1]  # per-level columns stay in the CSV


# --------------------------------------------------------------------------- generators on tiny checkpoints


def test_embedding_generation_resumes_and_feeds_the_probe(tmp_path, pose_cache):
    checkpoints = write_checkpoint(tmp_path, "hiera3d", pose_architecture("hiera3d"))
    job = gen_job(tmp_path, "hiera3d", "pose", checkpoints, pose_cache)
    full = generate(job)
    windows = len(pd.read_parquet(pose_cache / "pose" / "manifest.parquet"))
    assert len(full) == windows * (64 // 8) * 3  # frames every 8th of 64, 3 stages
    assert sorted(full.groupby("level")["embedding"].first().map(len)) == [32, 48, 64]
    first = full[(full["sample_id"] == "0") & (full["level"] == 2)]
    assert first["token"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # 8 time tokens at stage 2
    metrics = evaluate(EvaluateJob("hiera3d", "pose", 1, "pose", job.output, pose_cache, PROBE,
                                   None))
    probes = metrics[metrics["metric"] == "probe_accuracy"]
    assert probes["value"].between(0, 1).all()
    # every baseline on every level, scored by the same probe on the same rows
    assert set(map(tuple, probes[["model", "level"]].to_numpy())) == {
        (m, lv) for m in ("trained", "pca", "kinematic", "constant") for lv in ("0", "1", "2")}
    value = metrics.set_index(["model", "level", "metric"])["value"]
    n_test = {m: value[(m, "2", "probe_n_test")] for m in ("trained", "pca", "kinematic", "constant")}
    assert len(set(n_test.values())) == 1
    # the demo's behaviours are made of speed and distance: the kinematic baseline decodes them
    assert value[("kinematic", "2", "probe_macro_f1")] > value[("constant", "2", "probe_macro_f1")] + 0.3
    assert value[("constant", "2", "probe_macro_f1_margin_ci_low")] <= value[("constant", "2", "probe_macro_f1_margin_ci_high")]
    # A killed job left part 0 behind: the re-run keeps it (sentinel) and computes the rest.
    parts = ChunkedParquet(job.work_dir, fingerprint(job))
    write_parquet(full.iloc[:0], parts.part(0))  # an empty part 0: must be kept, not recomputed
    again = generate(job)
    assert len(again) == len(full) - (full["sample_id"].astype(int) < 64).sum()
    assert not job.work_dir.exists()


def test_hjepa_levels_and_posevae_outputs(tmp_path, pose_cache):
    checkpoints = write_checkpoint(tmp_path / "j", "hjepa", pose_architecture("hjepa"))
    out = generate(gen_job(tmp_path / "j", "hjepa", "pose", checkpoints, pose_cache))
    assert sorted(out["level"].unique()) == [0, 1, 2]

    checkpoints = write_checkpoint(tmp_path / "v", "posevae", pose_architecture("posevae"))
    job = gen_job(tmp_path / "v", "posevae", "pose", checkpoints, pose_cache)
    out = generate(job)
    counts = out["kind"].value_counts()
    windows = len(pd.read_parquet(pose_cache / "pose" / "manifest.parquet"))
    assert (counts["reconstruction"], counts["prior"], counts["prior_mean"], counts["interpolation"]) == (
        windows, 3, 1, 4)
    assert generate(job)["pose"].map(list).equals(out["pose"].map(list))  # seeded: identical rerun
    metrics = evaluate(EvaluateJob("posevae", "pose", 1, "pose", job.output, pose_cache, PROBE, None))
    assert set(metrics["model"]) == {"trained", "pca", "copy_previous", "keyframe_interpolation", "prior_mean"}
    baseline = metrics[metrics["model"] != "trained"]
    assert set(baseline["metric"]) == {"recon_mse", "recon_rmse_px"} and baseline["value"].gt(0).all()
    metrics = metrics[metrics["model"] == "trained"]
    values = dict(zip(metrics["metric"], metrics["value"]))
    # the stored reconstruction gives the same held-out MSE as the model itself
    from strata.evaluation.checkpoints import load_model
    from strata.evaluation.data import pose_windows
    data = pose_windows(pose_cache)
    test = torch.from_numpy(np.flatnonzero(pose_test_mask(data.table, 2)))
    model = load_model("posevae", checkpoints, 1)
    recon = model.reconstruct(data.x[test], data.valid[test]).recon
    x, w = data.x[test][:, :, 0], data.valid[test][:, :, 0].float()
    assert values["recon_mse"] == pytest.approx(float(((recon - x) ** 2 * w).sum() / w.sum()), rel=1e-5)
    assert values["kl"] > 0 and 0 <= values["active_units"] <= pose_architecture("posevae")["latent_dim"]
    with torch.no_grad():
        prior_mean = model.decode(torch.zeros(1, *model.encode(x[:1]).mu.shape[1:]), num_frames=x.shape[1]).pose
    prior_mse = float(((prior_mean - x) ** 2 * w).sum() / w.sum())
    assert values["prior_mean_mse_ratio"] == pytest.approx(prior_mse / values["recon_mse"], rel=1e-4)
    assert values["border_mse_ratio"] > 0 and 0 <= values["prior_body_length_in_range"] <= 1
    assert 80 < values["data_body_length_px"] < 100  # the demo's mice (nose to tail base ~90 px)


def test_ct_embeddings_and_cross_validated_probes_with_baselines(tmp_path):
    cache = tmp_path / "cache"
    rows, findings = [], {}
    for i in range(6):
        sid = f"s{i}"
        image = torch.rand(1, 16, 16, 8) + (i % 2)  # cardiomegaly studies are brighter
        save_tensors({"image": image, "masks": torch.zeros(10, 16, 16, 8, dtype=torch.uint8)},
                     cache / "ct" / "studies" / f"{sid}.safetensors")
        rows.append({"study_id": sid, "cache_file": str(cache / "ct" / "studies" / f"{sid}.safetensors")})
        findings[sid] = {"nodule_size": ("none", "small", "large")[i % 3], "cardiomegaly": str(bool(i % 2)),
                         "effusion": ("none", "left")[i // 3]}
    write_parquet(pd.DataFrame(rows), cache / "ct" / "manifest.parquet")
    checkpoints = write_checkpoint(tmp_path, "hiera3d", TINY_CT_HIERA)
    job = gen_job(tmp_path, "hiera3d", "ct", checkpoints, cache, generation=GenerationConfig(4, 8))
    out = generate(job)
    assert len(out) == 12 and (out["frame"] == -1).all()
    metrics = evaluate(EvaluateJob("hiera3d", "ct", 1, "ct", job.output, cache, PROBE, findings))
    names = set(metrics["metric"])
    assert {"probe_macro_f1/cardiomegaly", "probe_macro_f1/effusion", "probe_macro_f1", "embedding_std"} <= names
    card = metrics[(metrics["metric"] == "probe_accuracy/cardiomegaly")].set_index(["model", "level"])["value"]
    assert (card["trained"] == 1.0).all()  # intensity separates the classes at every level
    assert (card["constant"] < 1.0).all() and (card["mask_volume"] < 1.0).all()  # empty masks: no information
    no_labels = evaluate(EvaluateJob("hiera3d", "ct", 1, "ct", job.output, cache, PROBE, None))
    assert set(no_labels["metric"]) == set(EMBEDDING_STATS)


def test_embedding_statistics_by_hand():
    from strata.evaluation.evaluate import embedding_statistics

    rng = np.random.default_rng(0)
    iso = embedding_statistics(rng.normal(size=(4000, 4)))
    assert iso["embedding_effective_rank"] == pytest.approx(4.0, rel=0.02)  # isotropic: every direction
    line = embedding_statistics(np.outer(rng.normal(size=500), [3.0, 4.0, 0.0, 0.0]))
    assert line["embedding_effective_rank"] == pytest.approx(1.0, abs=1e-6)  # collapsed onto one line
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert embedding_statistics(x)["embedding_norm"] == 2.5 and embedding_statistics(x)["embedding_std"] == 1.75


# --------------------------------------------------------------------------- pose without labels, label files


@pytest.fixture(scope="module")
def unlabelled_cache(tmp_path_factory) -> Path:
    """``<cache>/pose`` of a MABe22-format file without any labels (like MABe22's training
    file): 5 sequences of 160 frames."""
    from strata.config import PosePreprocessConfig, from_dict
    from strata.pose.mabe22_files import write_mabe22_tracks
    from strata.pose.stage import preprocess_pose

    root = tmp_path_factory.mktemp("unlabelled")
    npy = root / "mouse_triplet_train.npy"
    write_mabe22_tracks(npy, 5, 160, seed=3)
    preprocess_pose(from_dict(PosePreprocessConfig, CONFIG["preprocess"]["pose"]), npy,
                    root / "cache" / "pose" / "shards", root / "cache" / "pose" / "manifest.parquet")
    return root / "cache"


def test_pose_without_labels_evaluates_embedding_statistics_and_the_vae(tmp_path, unlabelled_cache):
    assert (pd.read_parquet(unlabelled_cache / "pose" / "manifest.parquet")["label"] == -1).all()
    checkpoints = write_checkpoint(tmp_path / "h", "hiera3d", pose_architecture("hiera3d"))
    job = gen_job(tmp_path / "h", "hiera3d", "pose", checkpoints, unlabelled_cache)
    generate(job)
    metrics = evaluate(EvaluateJob("hiera3d", "pose", 1, "pose", job.output, unlabelled_cache, PROBE, None))
    assert set(metrics["metric"]) == set(EMBEDDING_STATS)  # no probe rows, no error
    assert sorted(metrics["level"].unique()) == ["0", "1", "2"] and metrics["value"].gt(0).all()

    checkpoints = write_checkpoint(tmp_path / "v", "posevae", pose_architecture("posevae"))
    job = gen_job(tmp_path / "v", "posevae", "pose", checkpoints, unlabelled_cache)
    generate(job)
    vae = evaluate(EvaluateJob("posevae", "pose", 1, "pose", job.output, unlabelled_cache, PROBE, None))
    trained = set(vae.loc[vae["model"] == "trained", "metric"])
    assert {"recon_mse", "kl", "active_units", "n_test_windows", "border_mse_ratio"} <= trained


def test_label_file_tasks_on_a_generated_run(tmp_path, unlabelled_cache, caplog):
    """The evaluate job on real generated embeddings with a MABe22-format label file that also
    lists sequences the pose data lacks: every task gets rows at every level."""
    import logging

    from strata.pose.errors import PoseFormatError
    from strata.pose.labels import read_task_labels
    from strata.pose.mabe22_files import sequence_names, write_mabe22_test_labels

    checkpoints = write_checkpoint(tmp_path, "hjepa", pose_architecture("hjepa"))
    job = gen_job(tmp_path, "hjepa", "pose", checkpoints, unlabelled_cache)
    generate(job)
    labels = tmp_path / "mouse_triplets_test_labels.npy"
    write_mabe22_test_labels(labels, dict.fromkeys(sequence_names(7), 160), seed=0)  # 2 more than the pose data
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(EvaluateJob("hjepa", "pose", 1, "pose", job.output, unlabelled_cache, PROBE, None,
                                       pose_labels=labels, pose_source="tracks.npy"))
    assert "2 of its 7 sequences are not in the pose data tracks.npy" in caplog.text
    by_level = metrics.groupby("level")["metric"].apply(set)
    expected = {"task_f1/chases", "task_f1_positive/chases", "task_accuracy/huddles", "task_mse/time_of_day",
                "task_r2/time_of_day", "task_seq_f1/strain", "task_seq_n_test/strain", "task_f1", "task_mse",
                "task_seq_f1", *EMBEDDING_STATS}
    assert list(by_level.index) == ["0", "1", "2"] and all(expected <= names for names in by_level)
    value = metrics[(metrics["level"] == "0") & (metrics["model"] == "trained")].set_index("metric")["value"]
    # 5 labelled sequences: every 5th (mabe0004) is validation, the other 4 are tested in folds
    assert value["task_seq_n_test/strain"] == 4  # one sample per sequence
    # frame-level: one sample per extracted frame (overlapping windows averaged), labelled frames only
    frames = pd.read_parquet(job.output).query("level == 0")[["sequence", "frame"]].drop_duplicates()
    task = read_task_labels(labels)
    chases = task.targets(task.tasks[0], task.frame_columns(frames["sequence"].to_numpy(), frames["frame"].to_numpy()))
    test = ~frames["sequence"].eq("mabe0004").to_numpy()
    assert value["task_n_test/chases"] == np.isfinite(chases[test]).sum()
    assert value["task_f1"] == pytest.approx(np.mean([value[f"task_f1/{t}"] for t in
                                                      ("chases", "huddles", "oral_oral_contact")]))
    # a label file about other sequences: an error naming both files
    other = tmp_path / "other_labels.npy"
    write_mabe22_test_labels(other, {"elsewhere": 160}, seed=0)
    with pytest.raises(PoseFormatError, match=r"none of its 1 sequences.*pose data tracks\.npy") as err:
        evaluate(EvaluateJob("hjepa", "pose", 1, "pose", job.output, unlabelled_cache, PROBE, None,
                             pose_labels=other, pose_source="tracks.npy"))
    assert str(other) in str(err.value)


def _synthetic_outputs(path: Path, labels_path: Path, n_sequences: int, n_frames: int) -> None:
    """A generate output with two levels: level 0 encodes the label file's tasks (plus noise),
    level 1 is noise only; every frame is embedded twice (two overlapping windows)."""
    from strata.pose.labels import read_task_labels
    from strata.pose.mabe22_files import sequence_names, write_mabe22_test_labels

    names = sequence_names(n_sequences)
    write_mabe22_test_labels(labels_path, dict.fromkeys(names, n_frames), seed=7)
    labels = read_task_labels(labels_path)
    rng = np.random.default_rng(0)
    frames = np.arange(0, n_frames, 2)
    rows = []
    for s, name in enumerate(names):
        start = labels.frame_number_map[name][0]
        y = np.nan_to_num(labels.label_array[:, start + frames])  # [tasks, K]
        signal = y.T * np.array([2.0, 2.0, 2.0, 1.0, 2.0])  # each task on its own axis
        for window in range(2):
            informative = signal + rng.normal(0, 0.3, signal.shape)
            noise = rng.normal(0, 1.0, (len(frames), 5))
            for level, emb in enumerate((informative, noise)):
                rows.append(pd.DataFrame({
                    "sample_id": f"{s}-{window}", "sequence": name, "frame": frames, "offset": frames,
                    "level": level, "token": 0, "label": -1, "embedding": list(emb.astype(np.float32))}))
    write_parquet(pd.concat(rows, ignore_index=True), path)


def test_task_probes_learn_informative_features_and_not_noise(tmp_path):
    labels = tmp_path / "labels.npy"
    _synthetic_outputs(tmp_path / "outputs.parquet", labels, n_sequences=40, n_frames=60)
    metrics = evaluate(EvaluateJob("hiera3d", "pose", 5, "pose", tmp_path / "outputs.parquet", tmp_path, PROBE, None,
                                   pose_labels=labels, baselines=False))
    value = metrics.pivot_table(index="metric", columns="level", values="value")
    for task in ("chases", "huddles", "oral_oral_contact"):
        assert value.loc[f"task_f1/{task}", "0"] > 0.9 and value.loc[f"task_f1/{task}", "1"] < 0.65
        assert value.loc[f"task_f1_positive/{task}", "0"] > value.loc[f"task_f1_positive/{task}", "1"] + 0.3
    assert value.loc["task_r2/time_of_day", "0"] > 0.8 and value.loc["task_r2/time_of_day", "1"] < 0.1
    assert value.loc["task_mse/time_of_day", "0"] < 0.25 * value.loc["task_mse/time_of_day", "1"]
    assert value.loc["task_seq_n_test/strain", "0"] == 32  # every 5th of 40 sequences is validation
    assert value.loc["task_seq_f1/strain", "0"] == 1.0 and value.loc["task_seq_f1/strain", "1"] < 0.8
    # 30 frames per sequence (every 2nd of 60), each embedded by two windows -> counted once
    from strata.pose.labels import read_task_labels

    task = read_task_labels(labels)
    tested = np.arange(40) % 5 != 4
    even = np.isfinite(task.label_array[0].reshape(40, 60)[tested, ::2]).sum()  # chases is row 0
    assert value.loc["task_n_test/chases", "0"] == even < 32 * 30
    assert "probe_macro_f1" not in value.index  # no per-frame behaviour labels in the pose data


def test_summary_without_the_best_metric_falls_back_to_the_last_checkpoint():
    long = pd.DataFrame([
        ("hiera3d", "pose", 100, "0", "embedding_std", 0.5), ("hiera3d", "pose", 200, "0", "embedding_std", 0.4),
        ("posevae", "pose", 50, "all", "recon_mse", 0.3),
    ], columns=["family", "run", "step", "level", "metric", "value"]).assign(model="trained")
    wide = wide_table(long)
    best = best_checkpoints(wide, {"hiera3d": BestCheckpoint("probe_macro_f1", True),
                                   "posevae": BestCheckpoint("recon_mse", False)}).set_index("family")
    assert best.loc["hiera3d", "step"] == 200 and np.isnan(best.loc["hiera3d", "value"])
    assert best.loc["hiera3d", "reason"] == "probe_macro_f1 not reported (no labels for it?): last checkpoint"
    assert best.loc["posevae", "reason"] == "best"
    md = markdown(wide, best.reset_index())
    assert "| hiera3d | pose | 200 | probe_macro_f1 | nan | True | probe_macro_f1 not reported" in md
    assert "| embedding_std | 0.5 | 0.4 |" in md and "tasks at checkpoint" not in md


def test_summary_lists_every_task_per_level_at_the_best_checkpoint():
    rows = []
    for step, f1 in ((1, 0.4), (2, 0.6)):
        for level in ("0", "1"):
            rows += [("hiera3d", "pose", step, level, "task_f1/chases", f1 + 0.1 * int(level)),
                     ("hiera3d", "pose", step, level, "task_n_test/chases", 30.0),
                     ("hiera3d", "pose", step, level, "task_mse/time_of_day", 2.0),
                     ("hiera3d", "pose", step, level, "task_seq_f1/strain", 0.5),
                     ("hiera3d", "pose", step, level, "task_f1", f1 + 0.1 * int(level))]
    wide = wide_table(pd.DataFrame(rows, columns=["family", "run", "step", "level", "metric", "value"]).assign(model="trained"))
    best = best_checkpoints(wide, {"hiera3d": BestCheckpoint("task_f1", True)})
    assert best["step"].tolist() == [2]
    md = markdown(wide, best)
    tasks = md.split("#### hiera3d / pose: tasks at checkpoint 2")[1]
    assert tasks.splitlines()[2] == "| task | scored per | score | L0 | L1 | mean |"
    assert "| chases | frame | f1 | 0.6 | 0.7 | 0.65 |" in tasks
    assert "| time_of_day | frame | mse | 2 | 2 | 2 |" in tasks and "| strain | sequence | f1 | 0.5 | 0.5 | 0.5 |" in tasks
    table = md.split("### hiera3d / pose")[1].split("####")[0]
    assert "| task_f1 |" in table and "task_f1/chases" not in table  # per-task columns only in the task table


# --------------------------------------------------------------------------- Reg2RG reports


def reg2rg_job(tmp: Path, fake_cache: dict, studies: list[str], batch_size: int = 1) -> GenerateJob:
    """A generate job over a Reg2RG checkpoint written as training writes it (untrained weights)."""
    import dataclasses

    from strata.config import to_dict
    from strata.evaluation.reg2rg import Reg2RGSources
    from strata.models.reg2rg import build_reg2rg
    from strata.reg2rg.train import write_checkpoint as write_reg2rg_checkpoint

    cfg = fake_cache["cfg"]
    folder = tmp / "checkpoints"
    if not (folder / "1").is_dir():
        model = build_reg2rg(cfg, fake_cache["layout"], 1234, with_encoders=False)
        write_reg2rg_checkpoint(folder / "1", model, {"config": to_dict(cfg), "seed": 1234, "epoch": 1})
    decoding = dataclasses.replace(cfg.generation, max_new_tokens=12, batch_size=batch_size)
    return GenerateJob(family="reg2rg", data="ct", checkpoints=folder, step=1, cache_dir=fake_cache["root"],
                       output=tmp / "generate" / "1" / "outputs.parquet", work_dir=tmp / "generate" / ".work-1",
                       generation=GENERATION, pose_test_sequences=2,
                       reg2rg=Reg2RGSources(fake_cache["root"] / "tokenizer", fake_cache["tokens"],
                                            fake_cache["reports"], tuple(studies), decoding))


def test_reg2rg_reports_resume_and_record_the_decoding(tmp_path, fake_cache, monkeypatch):
    import json

    import strata.evaluation.reg2rg as module

    (fake_cache["root"] / "ct").mkdir(exist_ok=True)  # the fingerprint hashes the CT manifest
    write_parquet(pd.DataFrame({"study_id": fake_cache["ids"]}), fake_cache["root"] / "ct" / "manifest.parquet")
    calls = []
    real = module.generate_reports

    def counting(model, dataset, cfg, **kwargs):
        calls.append(list(dataset.study_ids))
        return real(model, dataset, cfg, **kwargs)

    monkeypatch.setattr(module, "generate_reports", counting)
    job = reg2rg_job(tmp_path, fake_cache, fake_cache["ids"])
    full = generate(job)
    # one part per study (batch_size 1), decoded with its own and with swapped visual tokens
    assert calls == [[s] for s in fake_cache["ids"] for _ in "ts"]
    whole = full[(full["region"] == "") & (full["control"] == "")]
    assert whole["study_id"].tolist() == fake_cache["ids"]
    references = pd.read_parquet(fake_cache["reports"])
    lung = references[(references["study_id"] == fake_cache["ids"][1]) & (references["region"] == "lung")]
    row = full[(full["study_id"] == fake_cache["ids"][1]) & (full["region"] == "lung") & (full["control"] == "")]
    assert row["reference"].item() == lung["sentence"].item()
    assert "thyroid" not in set(full.loc[full["study_id"] == fake_cache["ids"][0], "region"])  # absent region
    decoding = json.loads(full["decoding"].iloc[0])
    assert decoding["max_new_tokens"] == 12 and decoding["num_beams"] == 1 and not decoding["do_sample"]
    assert decoding["mode"] == "study" and full["raw"].iloc[0]
    # A killed job left part 1 behind: the re-run keeps it and decodes only the other studies.
    calls.clear()
    parts = ChunkedParquet(job.work_dir, fingerprint(job))
    sentinel = full[full["study_id"] == fake_cache["ids"][1]].assign(generated="SENTINEL")
    write_parquet(sentinel, parts.part(1))
    again = generate(job)
    assert calls == [[fake_cache["ids"][0]]] * 2 + [[fake_cache["ids"][2]]] * 2
    assert (again.loc[again["study_id"] == fake_cache["ids"][1], "generated"] == "SENTINEL").all()
    others = again["study_id"] != fake_cache["ids"][1]
    pd.testing.assert_frame_equal(again[others].reset_index(drop=True),
                                  full[full["study_id"] != fake_cache["ids"][1]].reset_index(drop=True))
    # other decoding settings are another fingerprint: stale parts are dropped, not mixed in
    longer = reg2rg_job(tmp_path, fake_cache, fake_cache["ids"][:1])
    assert fingerprint(longer) != fingerprint(job)


def test_reg2rg_evaluation_scores_reports_regions_and_findings(tmp_path):
    from strata.ct.demo_plan import DemoFindings, region_sentences
    from strata.ct.regions import REGIONS
    from strata.evaluation.reg2rg import COLUMNS

    truths = {"s1": DemoFindings(12, "left", True, "none"), "s2": DemoFindings(0, "left", False, "right")}
    rows = []
    for study, truth in truths.items():
        reference = region_sentences(truth, REGIONS)
        generated = dict(reference) if study == "s1" else {"lung": "A small 9 mm nodule is seen in the left lung.",
                                                          "heart": "Heart size is normal."}
        rows.append((study, "", " ".join(generated[r] for r in REGIONS if r in generated),
                     " ".join(reference.values()), "", "{}"))
        rows += [(study, r, generated.get(r, ""), reference[r], "", "{}") for r in REGIONS]
    path = tmp_path / "outputs.parquet"
    write_parquet(pd.DataFrame(rows, columns=list(COLUMNS)), path)
    metrics = evaluate(EvaluateJob("reg2rg", "demo", 3, "ct", path, tmp_path, PROBE, None, demo_findings=truths))
    value = metrics.set_index("metric")["value"]
    assert set(metrics["level"]) == {"all"}
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l"):
        assert 0 < value[name] < 1 and 0 < value[f"{name}_corpus"] < 1
    for name in ("bleu1", "bleu4", "rouge_l"):  # s1 and s2 state the heart exactly as the reference
        assert value[f"region/heart/{name}"] == pytest.approx(1.0)
        assert value[f"region/heart/{name}_corpus"] == pytest.approx(1.0)
    assert value["region/heart/meteor"] > 0.9
    # s1 exact, s2 has no pleura text: per-sample mean (1 + 0) / 2; corpus: LCS 8 of 8 generated
    # and 16 reference tokens -> P 1, R 1/2, F1 2/3
    assert value["region/pleura/rouge_l"] == pytest.approx(0.5)
    assert value["region/abdomen/rouge_l_corpus"] == pytest.approx(2 / 3)
    assert value["n_studies"] == 2
    # findings: s1 all right; s2 nodule stated (wrong), heart right, effusion unreadable (wrong)
    assert value["finding_accuracy/nodule_presence"] == 0.5
    assert value["finding_accuracy/nodule_side"] == 1.0  # only s1 has a nodule
    assert value["finding_accuracy/cardiomegaly"] == 1.0 and value["finding_accuracy/effusion"] == 0.5
