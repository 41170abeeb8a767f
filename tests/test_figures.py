"""Rollout maps per model family and the figure writers (PNG files, Agg backend)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluation import TINY_CT_HIERA, pose_architecture

from strata.figures.ct import ct_rollout_figure, planes
from strata.figures.curves import loss_figure, metric_figure, smooth
from strata.figures.pose import pose_rollout_figure, reconstruction_figure, samples_figure
from strata.figures.reports import matched_words, reports_figure
from strata.figures.rollout_maps import (
    hiera3d_rollout,
    hjepa_rollout,
    posevae_rollout,
    reg2rg_rollout,
    upsample_grid,
)
from strata.figures.runs import split_corpus_metrics
from strata.models.registry import build_model
from strata.rollout import rollout

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_upsample_grid_gives_each_patch_its_token_value():
    out = upsample_grid(torch.arange(4.0).view(2, 1, 2), (2, 1, 3))
    assert out.shape == (4, 1, 6) and out[:, 0, :].tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2


def test_rollouts_of_every_family_cover_the_input():
    torch.manual_seed(0)
    hiera = build_model("hiera3d", pose_architecture("hiera3d")).eval()
    x = torch.randn(1, 1, 64, 1, 72)
    result = hiera3d_rollout(hiera, x)
    assert result.matrix.shape == (16, 768)  # rectangular: last-stage tokens x input tokens
    assert torch.allclose(result.matrix.sum(-1), torch.ones(16), atol=1e-5)  # row-stochastic product
    assert result.relevance.shape == (64, 1, 72)

    ct = build_model("hiera3d", TINY_CT_HIERA).eval()
    assert hiera3d_rollout(ct, torch.rand(1, 1, 16, 16, 8)).relevance.shape == (16, 16, 8)

    jepa = build_model("hjepa", pose_architecture("hjepa")).eval()
    result = hjepa_rollout(jepa, x)
    assert result.matrix.shape == (96, 96) and result.relevance.shape == (64, 1, 72)

    vae = build_model("posevae", pose_architecture("posevae")).eval()
    window = torch.randn(1, 64, 1, 72)
    result = posevae_rollout(vae, window, torch.ones_like(window))
    assert result.matrix.shape == (4, 4) and result.relevance.shape == (64,)
    # relevance is constant inside a chunk (attention over chunks only)
    assert torch.equal(result.relevance[:16], result.relevance[0].expand(16))


def test_ct_planes_are_central_slices():
    volume = np.arange(4 * 6 * 8, dtype=float).reshape(4, 6, 8)
    p = planes(volume)
    assert p["axial"].shape == (6, 4) and p["coronal"].shape == (8, 4) and p["sagittal"].shape == (8, 6)
    assert p["axial"][0, 0] == volume[0, 0, 4]


def test_figure_writers_produce_pngs(tmp_path):
    rng = np.random.default_rng(0)
    ct_rollout_figure(rng.random((16, 16, 8)), rng.random((16, 16, 8)), (5.0, 5.0, 9.0), "ct", tmp_path / "ct.png")
    pose_rollout_figure(rng.random((64, 72)), rng.random((64, 72)), "pose", tmp_path / "pose.png")
    pose_rollout_figure(rng.random(64), rng.random((64, 72)), "vae", tmp_path / "vae.png", rng.random((4, 4)))
    windows = rng.random((2, 64, 72))
    reconstruction_figure(windows, windows > 0.1, windows + 0.1, ["a", "b"], "recon", tmp_path / "recon.png")
    samples_figure(rng.random((2, 64, 72)), rng.random((3, 64, 72)), "samples", tmp_path / "samples.png")
    log = pd.DataFrame({"step": np.arange(1, 51), "loss": np.linspace(1, 0.1, 50), "lr": 0.1, "kl": 1.0})
    loss_figure(log, [25, 50], "loss", tmp_path / "loss.png")
    metrics = pd.DataFrame({"step": [1, 2, 1, 2], "level": ["0", "0", "1", "1"],
                            "metric": ["probe_macro_f1"] * 4, "value": [0.1, 0.2, 0.3, 0.4]})
    metric_figure(metrics, ["probe_macro_f1", "absent"], 2, "metrics", tmp_path / "metrics.png")
    with pytest.raises(ValueError, match="none of the metrics"):
        metric_figure(metrics, ["absent"], None, "x", tmp_path / "none.png")
    for name in ("ct", "pose", "vae", "recon", "samples", "loss", "metrics"):
        assert is_png(tmp_path / f"{name}.png"), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_metric_curves_of_label_free_and_task_runs(tmp_path):
    """A pose run without labels has only embedding statistics; a run probed on a label file
    has the task means: the default curve list draws whichever exist."""
    from strata.figures.runs import CURVE_METRICS

    names = CURVE_METRICS["default"]
    rows = [(step, level, "embedding_std", 0.1 * step) for step in (1, 2) for level in ("0", "1")]
    label_free = pd.DataFrame(rows, columns=["step", "level", "metric", "value"])
    metric_figure(label_free, names, 2, "no labels", tmp_path / "free.png")
    tasks = pd.concat([label_free, label_free.assign(metric="task_f1"), label_free.assign(metric="task_seq_f1")])
    metric_figure(tasks, names, 2, "tasks", tmp_path / "tasks.png")
    assert is_png(tmp_path / "free.png") and is_png(tmp_path / "tasks.png")
    with pytest.raises(ValueError, match=r"none of the metrics \['probe_macro_f1'\]"):
        metric_figure(label_free, ["probe_macro_f1"], 2, "x", tmp_path / "none.png")


def test_smooth_is_a_trailing_mean():
    assert smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_reg2rg_vit_rollout_is_the_plain_spatial_rollout_over_its_blocks():
    from test_reg2rg_support import demo_config

    from strata.models.reg2rg import build_encoders

    vit = build_encoders(demo_config().encoder, 1234).vit
    x = torch.rand(1, 1, 64, 64, 32)
    result = reg2rg_rollout(vit, x)
    _, attentions = vit(x, return_attention=True)
    assert len(attentions) == vit.cfg.depth
    torch.testing.assert_close(result.matrix, rollout(attentions)[0])
    assert result.matrix.shape == (32, 32)  # 2 x 2 x 8 patch tokens, no CLS token
    assert result.relevance.shape == (64, 64, 32)
    # every voxel of a 32 x 32 x 4 patch carries its token's relevance
    assert torch.equal(result.relevance[:32, :32, :4], result.relevance[0, 0, 0].expand(32, 32, 4))


def test_matched_words_follow_the_lcs_with_the_reference():
    words = matched_words("A small 12 mm nodule is seen in the right lung.",
                          "A large 28 mm nodule is seen in the left lung.")
    assert [w for w, ok in words if not ok] == ["small", "12", "right"]
    assert matched_words("", "anything") == []
    assert matched_words("Heart size is normal.", "The heart is enlarged.") == [
        ("Heart", True), ("size", False), ("is", True), ("normal.", False)]  # "normal." needs both tokens


def test_reports_figure_and_report_metric_curves(tmp_path):
    table = pd.DataFrame([
        ("s1", "", "The heart is enlarged.", "Heart size is normal.", "", "{}"),
        ("s1", "heart", "The heart is enlarged.", "Heart size is normal.", "", "{}"),
        ("s1", "lung", "", "No pulmonary nodule is seen. The lung parenchyma is clear.", "", "{}"),
        ("s1", "trachea and bronchie", "The trachea and main bronchi are patent.",
         "The trachea and main bronchi are patent.", "", "{}"),
    ], columns=["study_id", "region", "generated", "reference", "raw", "decoding"])
    reports_figure(table, ["s1"], "reports", tmp_path / "reports.png")
    assert is_png(tmp_path / "reports.png")
    long = pd.DataFrame({"step": [1, 1, 1, 2, 2, 2], "level": "all",
                         "metric": ["bleu1", "bleu1_corpus", "finding_accuracy"] * 2,
                         "value": [0.1, 0.2, 0.5, 0.3, 0.4, 0.6]})
    split = split_corpus_metrics(long)
    assert sorted(set(split["metric"])) == ["bleu1", "finding_accuracy"]
    assert split.loc[split["metric"] == "bleu1", "level"].tolist() == ["per-sample mean", "corpus"] * 2
    assert split.loc[split["metric"] == "finding_accuracy", "level"].tolist() == ["all", "all"]
    metric_figure(split, ["bleu1", "finding_accuracy"], 2, "reg2rg", tmp_path / "curves.png")
    assert is_png(tmp_path / "curves.png")


def test_probe_figure_draws_a_panel_per_label_and_says_when_there_are_none(tmp_path):
    from matplotlib.image import imread

    from strata.figures.probes import panels, probe_figure

    rows = [(5, lv, model, metric, value) for lv in ("0", "1") for model, value in (("trained", 0.6), ("pca", 0.4))
            for metric in ("probe_macro_f1", "task_f1/turning", "task_seq_f1/strain")]
    long = pd.DataFrame(rows, columns=["step", "level", "model", "metric", "value"])
    assert [m for m, _ in panels(long)] == ["probe_macro_f1", "task_f1/turning", "task_seq_f1/strain"]
    probe_figure(long, 5, "run", tmp_path / "three.png")
    probe_figure(long[long["metric"] == "probe_macro_f1"], 5, "run", tmp_path / "one.png")
    assert imread(tmp_path / "three.png").shape[1] > 2 * imread(tmp_path / "one.png").shape[1]  # a panel each
    probe_figure(long.assign(metric="embedding_std"), 5, "run", tmp_path / "none.png")
    assert panels(long.assign(metric="embedding_std")) == [] and (tmp_path / "none.png").stat().st_size > 0
