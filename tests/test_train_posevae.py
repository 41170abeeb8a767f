"""Training the pose VAE with the shared loop on the demo's cached pose windows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import DEFAULT_CONFIG, copy_workflow, run_snakemake
from safetensors.torch import load_file
from torch.utils.data import Subset

from strata.config import ConfigError, load_config, read_yaml
from strata.models.registry import build_model
from strata.pose.demo import generate_demo_pose, to_mabe_dict
from strata.pose.processing import prepare_sequence
from strata.pose.sequence import PoseSequence
from strata.pose.stage import preprocess_pose
from strata.schema import validate_config
from strata.training.checkpoint import WEIGHTS
from strata.training.datasets import pad_pose_sequences
from strata.training.loop import RunSpec, train
from strata.training.run import open_dataset, train_run


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model: one thread is as fast as two here and much faster on a busy machine
    (two OpenMP threads competing with other jobs for 2 cores slow a step down ~10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    return float((((pred - target) ** 2) * valid).sum() / valid.sum())


def test_reconstruction_of_held_out_sequences_beats_the_mean_pose(tmp_path, pose_cache):
    """Train on the windows of 10 demo sequences; on the 2 held-out sequences the
    reconstruction error (observed keypoints only) is far below predicting each
    sequence's mean pose, and below predicting each chunk's own mean pose (so the decoder
    follows the motion inside a chunk)."""
    cfg = load_config(DEFAULT_CONFIG)
    run = cfg.models["posevae"]["pose"]
    dataset, _ = open_dataset("posevae", "pose", pose_cache)
    sequences = dataset.table["sequence"].to_numpy()
    held_out = set(sorted(set(sequences))[-2:])
    train_idx = np.flatnonzero(~np.isin(sequences, list(held_out))).tolist()
    test_idx = np.flatnonzero(np.isin(sequences, list(held_out))).tolist()
    assert len(test_idx) >= 8

    torch.manual_seed(cfg.seed)
    model = build_model("posevae", run.architecture)
    spec = RunSpec(train=run.train, seed=cfg.seed, run_dir=tmp_path, meta={}, architecture=run.architecture,
                   fingerprint="test")
    log = train(model, Subset(dataset, train_idx), spec)
    assert log["recon"].iloc[-10:].mean() < 0.5 * log["recon"].iloc[:3].mean()

    trained = build_model("posevae", run.architecture)
    trained.load_state_dict(load_file(str(tmp_path / "checkpoints" / str(run.train.total_steps) / WEIGHTS)))
    trained.eval()
    x = torch.stack([dataset[i]["x"] for i in test_idx])[:, :, 0]  # (N, T, F)
    valid = torch.stack([dataset[i]["valid"] for i in test_idx])[:, :, 0].float()
    with torch.no_grad():
        recon = trained.reconstruct(x, valid).recon
    mean_pose = torch.zeros_like(x)
    test_sequences = sequences[test_idx]
    for name in held_out:  # each held-out sequence's mean pose over all its observed frames
        rows = torch.from_numpy(test_sequences == name)
        mean_pose[rows] = (x[rows] * valid[rows]).sum((0, 1)) / valid[rows].sum((0, 1)).clamp_min(1)
    chunk_mean = torch.zeros_like(x)  # each chunk's mean observed pose (an oracle that knows the chunk)
    L = trained.config.chunk_len
    for a in range(0, x.shape[1], L):
        xs, vs = x[:, a:a + L], valid[:, a:a + L]
        chunk_mean[:, a:a + L] = (xs * vs).sum(1, keepdim=True) / vs.sum(1, keepdim=True).clamp_min(1)
    error, baseline = masked_mse(recon, x, valid), masked_mse(mean_pose, x, valid)
    chunk_baseline = masked_mse(chunk_mean, x, valid)
    assert error < 0.05 * baseline, (error, baseline)
    assert error < 0.8 * chunk_baseline, (error, chunk_baseline)


# --------------------------------------------------------------------------- whole sequences (unit: sequences)

LONG_LENGTHS = {"seq0000": 2000, "seq0001": 3000, "seq0002": 2613}  # frames; 2613 is no multiple of any chunk


@pytest.fixture(scope="module")
def long_pose(tmp_path_factory) -> tuple[Path, dict]:
    """A pose cache (windows + whole sequences) of 3 demo sequences of 2000-3000 frames."""
    cfg = load_config(DEFAULT_CONFIG)
    demo = dataclasses.replace(cfg.demo.pose, n_sequences=len(LONG_LENGTHS), n_frames=max(LONG_LENGTHS.values()))
    sequences = {name: PoseSequence(seq.keypoints[:LONG_LENGTHS[name]], seq.labels[:LONG_LENGTHS[name]])
                 for name, seq in generate_demo_pose(demo, cfg.seed).items()}
    root = tmp_path_factory.mktemp("long_pose")
    npy = root / "mouse_triplet_train.npy"
    with open(npy, "wb") as fh:
        np.save(fh, to_mabe_dict(sequences), allow_pickle=True)  # our own dict, as the demo writes it
    pose = root / "cache" / "pose"
    preprocess_pose(cfg.preprocess.pose, npy, pose / "shards", pose / "manifest.parquet", pose / "sequences.safetensors")
    return root / "cache", sequences


def test_sequence_cache_holds_whole_cleaned_sequences(long_pose):
    """``unit: sequences`` items are the whole sequences, never cut, cleaned and normalised
    exactly as the windows are."""
    cache, sequences = long_pose
    pre = load_config(DEFAULT_CONFIG).preprocess.pose
    dataset, manifests = open_dataset("posevae", "pose", cache, "sequences")
    assert manifests == [cache / "pose" / "sequences.safetensors"]
    assert list(dataset.table["sequence"]) == sorted(LONG_LENGTHS)
    for i, name in enumerate(sorted(LONG_LENGTHS)):
        item = dataset[i]
        features, valid = prepare_sequence(sequences[name].keypoints, pre.center, pre.arena_px, pre.egocentric, name)
        assert item["x"].shape == (LONG_LENGTHS[name], 1, 72)
        np.testing.assert_array_equal(item["x"][:, 0].numpy(), features)
        np.testing.assert_array_equal(item["valid"][:, 0].numpy(), valid)
        np.testing.assert_array_equal(item["labels"].numpy(), sequences[name].labels)
    windows, _ = open_dataset("posevae", "pose", cache)  # same preprocessing as the cached windows
    row = windows.table.iloc[-1]
    seq = dataset[sorted(LONG_LENGTHS).index(row["sequence"])]
    np.testing.assert_array_equal(windows[len(windows) - 1]["x"].numpy(), seq["x"][row["start"]:row["stop"]].numpy())


def loss_and_grads(model, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same reparameterisation noise for the real chunks (padding adds chunks at the end)
    out = model.training_step(batch)
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_padded_frames_do_not_change_loss_or_gradients(long_pose):
    """Padding a 2000-frame sequence to 3000 frames with garbage (marked padding) gives the
    loss and gradients of the sequence alone; in a batch with a 3000-frame sequence, what the
    padded frames hold changes nothing either."""
    cache, _ = long_pose
    cfg = load_config(DEFAULT_CONFIG)
    dataset, _ = open_dataset("posevae", "pose", cache, "sequences")
    short, long = dataset[0], dataset[1]  # 2000 and 3000 frames
    torch.manual_seed(cfg.seed)
    model = build_model("posevae", cfg.models["posevae"]["pose"].architecture)
    model.train()

    alone = pad_pose_sequences([short])
    padded = pad_pose_sequences([short, long])
    assert padded["x"].shape[:2] == (2, 3000) and int(padded["frame_mask"][0].sum()) == 2000
    first = {k: v[:1] for k, v in padded.items()}
    garbage = {k: v.clone() for k, v in first.items()}
    garbage["x"][0, 2000:] = 1e3 * torch.randn_like(garbage["x"][0, 2000:])
    garbage["valid"][0, 2000:] = 1  # even claimed observed: the frame mask wins
    loss_alone, grads_alone = loss_and_grads(model, alone)
    for batch in (first, garbage):
        loss, grads = loss_and_grads(model, batch)
        assert loss == pytest.approx(loss_alone, rel=1e-5)
        assert grads.keys() == grads_alone.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, grads_alone[name], rtol=1e-4, atol=1e-7, msg=name)

    both_garbage = {k: v.clone() for k, v in padded.items()}
    both_garbage["x"][0, 2000:] = -7.0
    both_garbage["valid"][0, 2000:] = 1
    loss_a, grads_a = loss_and_grads(model, padded)
    loss_b, grads_b = loss_and_grads(model, both_garbage)
    assert loss_a == loss_b
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=0, msg=name)


def test_training_run_on_whole_sequences_of_thousands_of_frames(long_pose, tmp_path):
    """``unit: sequences`` in the run config makes the training entry point train on the
    whole 2000-3000-frame sequences (padded per batch), with checkpoints recording them."""
    cache, _ = long_pose
    cfg = load_config(DEFAULT_CONFIG)
    run = cfg.models["posevae"]["pose"]
    steps = 3
    run = dataclasses.replace(run, unit="sequences",
                              train=dataclasses.replace(run.train, batch_size=2, total_steps=steps, save_every=steps))
    log = train_run("posevae", "long", run, cfg.seed, cache, tmp_path)
    assert list(log["step"]) == list(range(1, steps + 1))
    meta = json.loads((tmp_path / "checkpoints" / str(steps) / "meta.json").read_text())
    assert any(key.endswith("sequences.safetensors") for key in json.dumps(meta).split('"'))
    assert '"unit": "sequences"' in json.dumps(meta)


def test_dag_trains_on_sequences_when_the_config_says_so(tmp_path):
    """The train_posevae job's input is the whole-sequence cache with ``unit: sequences``,
    and the window shards without it."""
    workdir = copy_workflow(tmp_path / "wf")
    raw = read_yaml(DEFAULT_CONFIG)
    raw["models"]["posevae"]["pose"]["unit"] = "sequences"
    (workdir / "sequences.yaml").write_text(yaml.safe_dump(raw))
    target = "results/posevae/pose/train_log.parquet"
    for configfile, expected, absent in ((DEFAULT_CONFIG, "results/cache/pose/shards", "sequences.safetensors"),
                                         (workdir / "sequences.yaml", "results/cache/pose/sequences.safetensors",
                                          "results/cache/pose/shards")):
        proc = run_snakemake(workdir, target, "-n", "--cores", "1", "--configfile", str(configfile))
        text = proc.stdout + proc.stderr
        job = text[text.index("rule train_posevae:"):]
        inputs = job[job.index("input:"):].splitlines()[0]
        assert expected in inputs and absent not in inputs, inputs


@pytest.mark.parametrize("family, data", [("hiera3d", "pose"), ("posevae", "ct")])
def test_sequences_unit_is_refused_where_it_cannot_apply(family, data):
    raw = read_yaml(DEFAULT_CONFIG)
    run = next(iter(raw["models"][family].values()))
    run.update(unit="sequences", data=data)
    with pytest.raises(ConfigError, match="unit|data"):
        validate_config(raw)
