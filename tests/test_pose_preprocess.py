"""Pose reading, interpolation, normalisation, windowing and the preprocess_pose stage."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from strata.config import DemoPoseConfig, PosePreprocessConfig
from strata.pose.demo import generate_demo_pose, to_mabe_dict, write_demo_pose
from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import BEHAVIOURS, KEYPOINT_INDEX, KEYPOINTS
from strata.pose.long_format import to_long_frame
from strata.pose.processing import egocentric, interpolate_missing, normalise, prepare_sequence
from strata.pose.readers import read_pose_file
from strata.pose.sequence import PoseSequence
from strata.pose.stage import MANIFEST_COLUMNS, preprocess_pose

DEMO = DemoPoseConfig(
    n_sequences=12, n_frames=480, n_agents=3, n_keypoints=12, arena_px=850.0, missing_fraction=0.02
)
PRE = PosePreprocessConfig(
    window=64,
    stride=32,
    center="arena",
    arena_px=850.0,
    egocentric=False,
    min_valid_fraction=0.0,
    shard_size=40,
)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The embedded-default demo written once: (npy, parquet)."""
    root = tmp_path_factory.mktemp("demo")
    npy, parquet = root / "mouse_triplet_train.npy", root / "mouse_triplet_train.parquet"
    write_demo_pose(DEMO, 1234, npy, parquet)
    return npy, parquet


def _outputs(root: Path) -> tuple[Path, Path]:
    return root / "cache" / "pose" / "shards", root / "cache" / "pose" / "manifest.parquet"


def _write_npy(path: Path, sequences: dict[str, np.ndarray]) -> Path:
    """A MABe22-style file with the given keypoint arrays (no labels)."""
    data = {"vocabulary": [], "sequences": {k: {"keypoints": v} for k, v in sequences.items()}}
    np.save(path, data, allow_pickle=True)  # writing test fixtures only
    return path


def _assert_nothing_written(root: Path) -> None:
    """No shard dir, no manifest and no temp leftovers anywhere under ``root``."""
    shards, manifest = _outputs(root)
    assert not shards.exists() and not manifest.exists()
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    assert leftovers == [], leftovers


def _assert_refused(src: Path, match: str, root: Path) -> None:
    """preprocess_pose on ``src`` fails with ``match`` and writes nothing under ``root``."""
    out = root / "results"
    with pytest.raises(PoseFormatError, match=match):
        preprocess_pose(PRE, src, *_outputs(out))
    _assert_nothing_written(out)


def _good_sequence(rng: np.random.Generator, n_frames: int = 100) -> np.ndarray:
    return rng.uniform(100, 700, (n_frames, 3, 12, 2)).astype(np.float32)


# ----------------------------------------------------------------------------- bad input


def test_wrong_shape_names_file_and_sequence(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = _write_npy(
        tmp_path / "bad.npy",
        {"good": _good_sequence(rng), "bent": rng.normal(size=(100, 3, 12, 3)).astype(np.float32)},
    )
    out = tmp_path / "results"
    with pytest.raises(PoseFormatError, match=r"sequence 'bent'.*\[100, 3, 12, 3\]") as err:
        preprocess_pose(PRE, src, *_outputs(out))
    assert str(src) in str(err.value)
    _assert_nothing_written(out)


def test_all_nan_agent_names_the_agent(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    kp = _good_sequence(rng)
    kp[:, 2] = np.nan
    src = _write_npy(tmp_path / "nan_agent.npy", {"a": _good_sequence(rng), "b": kp})
    out = tmp_path / "results"
    with pytest.raises(PoseFormatError, match=r"sequence 'b'.*agent 2") as err:
        preprocess_pose(PRE, src, *_outputs(out))
    assert str(src) in str(err.value)
    _assert_nothing_written(out)


def test_sequence_shorter_than_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = _write_npy(
        tmp_path / "short.npy", {"long": _good_sequence(rng, 200), "tiny": _good_sequence(rng, 63)}
    )
    out = tmp_path / "results"
    with pytest.raises(PoseFormatError, match=r"sequence 'tiny'.*63 frames.*64") as err:
        preprocess_pose(PRE, src, *_outputs(out))
    assert str(src) in str(err.value)
    _assert_nothing_written(out)


@pytest.mark.parametrize(("value", "shown"), [(1e30, "1e+30"), (np.inf, "inf"), (-np.inf, "-inf"), (-2000.0, "-2000")])
def test_implausible_coordinates_name_the_frame_agent_and_keypoint(tmp_path: Path, value: float, shown: str) -> None:
    rng = np.random.default_rng(3)
    kp = _good_sequence(rng)
    kp[7, 1, 4, 1] = value
    src = _write_npy(tmp_path / "far.npy", {"a": _good_sequence(rng), "b": kp})
    _assert_refused(src, rf"far\.npy, sequence 'b': frame 7, agent 1, keypoint '{KEYPOINTS[4]}' has y = "
                         rf"{re.escape(shown)} px; coordinates must be finite and within \[-850, 1700\]", tmp_path)


def test_complex_coordinates_are_refused(tmp_path: Path) -> None:
    kp = _good_sequence(np.random.default_rng(4)).astype(np.complex64)
    src = _write_npy(tmp_path / "complex.npy", {"a": kp})
    _assert_refused(src, r"complex\.npy, sequence 'a': 'keypoints' must be a real numeric array, got complex64",
                    tmp_path)


def test_a_forged_frame_number_in_the_long_format_is_refused_before_allocating(tmp_path: Path) -> None:
    rows = [{"sequence": "s", "frame": f, "agent": 0, "keypoint": KEYPOINTS[0], "x": 1.0, "y": 2.0}
            for f in (0, 1, 10**9)]
    src = tmp_path / "forged.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    _assert_refused(src, r"forged\.csv, sequence 's': frames run to 1000000000 but only 3 distinct frames have rows",
                    tmp_path)


def test_malicious_pickle_writes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.npy"
    np.save(src, {"sequences": {"s": {"keypoints": Evil()}}}, allow_pickle=True)
    out = tmp_path / "results"
    with pytest.raises(PoseFormatError, match="refused"):
        preprocess_pose(PRE, src, *_outputs(out))
    assert not marker.exists()
    _assert_nothing_written(out)


def test_not_a_mabe_dict(tmp_path: Path) -> None:
    src = tmp_path / "array.npy"
    np.save(src, np.zeros((10, 3, 12, 2)), allow_pickle=False)
    with pytest.raises(PoseFormatError, match="'sequences'"):
        read_pose_file(src)


def test_failed_run_keeps_previous_outputs_untouched(
    tmp_path: Path, demo_files: tuple[Path, Path]
) -> None:
    out = tmp_path / "results"
    shards, manifest = _outputs(out)
    preprocess_pose(PRE, demo_files[0], shards, manifest)
    before = {p.name: p.read_bytes() for p in shards.iterdir()}, manifest.read_bytes()
    bad = _write_npy(tmp_path / "bad.npy", {"x": np.zeros((100, 3, 12, 3), np.float32)})
    with pytest.raises(PoseFormatError):
        preprocess_pose(PRE, bad, shards, manifest)
    assert ({p.name: p.read_bytes() for p in shards.iterdir()}, manifest.read_bytes()) == before
    assert sorted(p.name for p in shards.parent.iterdir()) == ["manifest.parquet", "shards"]


# ----------------------------------------------------------------------------- processing


def test_interpolation_fills_gap_linearly_and_marks_it() -> None:
    kp = np.zeros((10, 1, 12, 2), np.float32)
    kp[:, 0, 3, 0] = np.arange(10) * 2.0 + 10.0  # x: 10, 12, ..., 28
    kp[:, 0, 3, 1] = 50.0 - np.arange(10) * 4.0  # y: 50, 46, ..., 14
    truth = kp.copy()
    kp[3:7, 0, 3] = np.nan  # a 4-frame gap inside
    kp[:2, 0, 5] = np.nan  # a gap at the start
    kp[8:, 0, 5, :] = np.nan  # and at the end
    kp[8:, 0, 5, 0] = 0.0  # only x present: still missing
    kp[:2, 0, 5] = np.nan
    filled, observed = interpolate_missing(kp, "test")
    np.testing.assert_array_equal(filled[:, 0, 3], truth[:, 0, 3])  # exact linear values
    np.testing.assert_array_equal(filled[:2, 0, 5], np.broadcast_to(truth[2, 0, 5], (2, 2)))
    np.testing.assert_array_equal(filled[8:, 0, 5], np.broadcast_to(truth[7, 0, 5], (2, 2)))
    expected = np.ones((10, 1, 12), bool)
    expected[3:7, 0, 3] = False
    expected[:2, 0, 5] = False
    expected[8:, 0, 5] = False
    np.testing.assert_array_equal(observed, expected)
    assert filled.dtype == np.float32 and np.isfinite(filled).all()


def test_never_observed_keypoint_takes_agent_mean() -> None:
    kp = np.random.default_rng(3).uniform(0, 100, (5, 2, 12, 2)).astype(np.float32)
    kp[:, 1, 11] = np.nan
    filled, observed = interpolate_missing(kp, "test")
    np.testing.assert_allclose(filled[:, 1, 11], kp[:, 1, :11].mean(axis=1), rtol=1e-6)
    assert not observed[:, 1, 11].any() and observed[:, 0].all()


def test_normalise_arena_maps_to_unit_square() -> None:
    kp = np.array([[[[0.0, 850.0], [425.0, 212.5]]]], np.float32)
    np.testing.assert_allclose(normalise(kp, "arena", 850.0), [[[[-1.0, 1.0], [0.0, -0.5]]]])
    assert normalise(kp, "none", 850.0) is kp


def test_egocentric_puts_neck_on_positive_x() -> None:
    kp = np.random.default_rng(4).uniform(-1, 1, (50, 3, 12, 2)).astype(np.float32)
    ego = egocentric(kp)
    axis = ego[:, :, KEYPOINT_INDEX["neck"]] - ego[:, :, KEYPOINT_INDEX["tail_base"]]
    np.testing.assert_allclose(axis[..., 1], 0.0, atol=1e-5)
    assert (axis[..., 0] > 0).all()
    np.testing.assert_allclose(ego[:, :, KEYPOINT_INDEX["center"]], 0.0, atol=1e-6)
    # rigid motion: pairwise distances inside each body are kept
    d_in = np.linalg.norm(kp[:, :, 0] - kp[:, :, 11], axis=-1)
    np.testing.assert_allclose(
        np.linalg.norm(ego[:, :, 0] - ego[:, :, 11], axis=-1), d_in, rtol=1e-5
    )


# ----------------------------------------------------------------------------- the stage


@pytest.mark.parametrize(
    "n_frames, window, stride", [(64, 64, 32), (100, 64, 32), (130, 64, 33), (200, 50, 7)]
)
def test_window_count_and_content(tmp_path: Path, n_frames: int, window: int, stride: int) -> None:
    rng = np.random.default_rng(n_frames)
    seqs = {"b": _good_sequence(rng, n_frames), "a": _good_sequence(rng, n_frames + 17)}
    src = _write_npy(tmp_path / "seq.npy", seqs)
    cfg = replace(PRE, window=window, stride=stride, center="none", shard_size=1000)
    shards, manifest = _outputs(tmp_path / "out")
    table = preprocess_pose(cfg, src, shards, manifest)
    counts = table.groupby("sequence").size().to_dict()
    assert counts == {name: (len(kp) - window) // stride + 1 for name, kp in seqs.items()}
    tensors = load_file(shards / "shard-00000.safetensors")
    assert tensors["x"].shape == (len(table), window, 1, 72) and tensors["x"].dtype == np.float32
    row = table.iloc[-1]  # last window of "b" (sequences are sorted)
    assert row["sequence"] == "b" and row["stop"] - row["start"] == window
    np.testing.assert_array_equal(
        tensors["x"][-1, :, 0], seqs["b"][row["start"] : row["stop"]].reshape(window, 72)
    )
    assert (tensors["labels"] == -1).all() and (table["label"] == -1).all()


def test_demo_shards_and_manifest(tmp_path: Path, demo_files: tuple[Path, Path]) -> None:
    shards, manifest = _outputs(tmp_path / "out")
    preprocess_pose(PRE, demo_files[0], shards, manifest)
    table = pd.read_parquet(manifest)
    assert tuple(table.columns) == MANIFEST_COLUMNS
    per_seq = (DEMO.n_frames - PRE.window) // PRE.stride + 1
    assert len(table) == DEMO.n_sequences * per_seq
    names = sorted(p.name for p in shards.iterdir())
    n_shards = -(-len(table) // PRE.shard_size)
    assert names == [f"shard-{i:05d}.safetensors" for i in range(n_shards)]
    assert (table["window_id"] == np.arange(len(table))).all()
    assert set(table["label"]) <= set(range(len(BEHAVIOURS)))
    for name in names:
        rows = table[table["shard"] == name]
        t = load_file(shards / name)
        assert t["x"].shape == (len(rows), PRE.window, 1, 72)
        assert t["valid"].dtype == np.uint8 and t["labels"].dtype == np.int64
        assert (rows["index"] == np.arange(len(rows))).all()
        assert np.isfinite(t["x"]).all() and np.abs(t["x"]).max() <= 1.2
        frac = t["valid"].reshape(len(rows), -1).mean(axis=1)
        np.testing.assert_allclose(frac, rows["valid_fraction"])
        assert frac.min() < 1.0  # the demo has missing keypoints
    src = read_pose_file(demo_files[0])
    for _, row in table.iloc[::17].iterrows():  # windows spread over all shards
        features, valid = prepare_sequence(
            src[row["sequence"]].keypoints, PRE.center, PRE.arena_px, PRE.egocentric, "test"
        )
        stored = load_file(shards / row["shard"])
        np.testing.assert_array_equal(
            stored["x"][row["index"], :, 0], features[row["start"] : row["stop"]]
        )
        np.testing.assert_array_equal(
            stored["valid"][row["index"], :, 0], valid[row["start"] : row["stop"]]
        )
    first = table.iloc[0]
    np.testing.assert_array_equal(
        load_file(shards / first["shard"])["labels"][first["index"]],
        src[first["sequence"]].labels[first["start"] : first["stop"]],
    )


def test_min_valid_fraction_drops_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    kp = _good_sequence(rng, 128)
    kp[64:, :, :6] = np.nan  # second half: half the keypoints missing
    src = _write_npy(tmp_path / "gappy.npy", {"s": kp})
    table = preprocess_pose(replace(PRE, min_valid_fraction=0.9), src, *_outputs(tmp_path / "out"))
    assert table["start"].tolist() == [0]
    kp[::2, 0, 0] = np.nan  # now no window is complete
    src = _write_npy(tmp_path / "gappier.npy", {"s": kp})
    out = tmp_path / "o2"
    with pytest.raises(PoseFormatError, match="no window"):
        preprocess_pose(replace(PRE, min_valid_fraction=1.0), src, *_outputs(out))
    _assert_nothing_written(out)


def test_npy_parquet_and_csv_inputs_agree(tmp_path: Path, demo_files: tuple[Path, Path]) -> None:
    npy, parquet = demo_files
    from_npy, from_parquet = read_pose_file(npy), read_pose_file(parquet)
    assert list(from_npy) == list(from_parquet)
    for name, seq in from_npy.items():
        np.testing.assert_array_equal(seq.keypoints, from_parquet[name].keypoints)
        np.testing.assert_array_equal(seq.labels, from_parquet[name].labels)
        assert from_parquet[name].keypoints.dtype == np.float32
        assert from_parquet[name].labels.dtype == np.int64
    long = pd.read_parquet(parquet)
    assert list(long.columns) == ["sequence", "frame", "agent", "keypoint", "x", "y", "behaviour"]
    assert set(long["keypoint"]) == set(KEYPOINTS)
    csv = tmp_path / "pose.csv"
    long.sample(frac=1.0, random_state=0).dropna(subset=["x"]).to_csv(
        csv, index=False
    )  # shuffled, NaN rows absent
    for name, seq in read_pose_file(csv).items():
        np.testing.assert_array_equal(seq.keypoints, from_npy[name].keypoints)

    a, b = tmp_path / "a", tmp_path / "b"
    ta = preprocess_pose(PRE, npy, *_outputs(a))
    tb = preprocess_pose(PRE, parquet, *_outputs(b))
    pd.testing.assert_frame_equal(
        ta.drop(columns="source_sha256"), tb.drop(columns="source_sha256")
    )
    for shard in sorted(_outputs(a)[0].iterdir()):
        x, y = load_file(shard), load_file(_outputs(b)[0] / shard.name)
        for key in ("x", "valid", "labels"):
            np.testing.assert_array_equal(x[key], y[key])


def test_two_runs_are_byte_identical(tmp_path: Path, demo_files: tuple[Path, Path]) -> None:
    cfg = replace(PRE, egocentric=True)
    runs = []
    for run in ("one", "two"):
        shards, manifest = _outputs(tmp_path / run)
        preprocess_pose(cfg, demo_files[0], shards, manifest)
        runs.append(({p.name: p.read_bytes() for p in shards.iterdir()}, manifest.read_bytes()))
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- demo data


def test_demo_is_deterministic_and_mabe_shaped(tmp_path: Path) -> None:
    small = replace(DEMO, n_sequences=2, n_frames=100)
    paths = []
    for run in ("a", "b"):
        npy, parquet = tmp_path / run / "p.npy", tmp_path / run / "p.parquet"
        write_demo_pose(small, 99, npy, parquet)
        paths.append((npy.read_bytes(), parquet.read_bytes()))
    assert paths[0] == paths[1]
    other = generate_demo_pose(small, 100)["seq0000"].keypoints
    assert not np.array_equal(
        other, generate_demo_pose(small, 99)["seq0000"].keypoints, equal_nan=True
    )
    data = to_mabe_dict(generate_demo_pose(small, 99))
    assert data["vocabulary"] == ["behaviour"]
    entry = data["sequences"]["seq0000"]
    assert entry["keypoints"].shape == (100, 3, 12, 2) and entry["keypoints"].dtype == np.float32
    assert entry["annotations"].shape == (1, 100)


def test_demo_labels_change_the_dynamics() -> None:
    seqs = generate_demo_pose(DEMO, 1234)
    center = KEYPOINT_INDEX["center"]
    speed = {b: [] for b in range(len(BEHAVIOURS))}
    distance = {b: [] for b in range(len(BEHAVIOURS))}
    missing = []
    for seq in seqs.values():
        c = seq.keypoints[:, :, center]
        v = np.linalg.norm(np.diff(c, axis=0), axis=-1).mean(axis=1)  # [T-1] mean over agents
        d = np.linalg.norm(c[:, :1] - c[:, 1:], axis=-1).mean(axis=1)[1:]  # leader to others
        for b in range(len(BEHAVIOURS)):
            same = (seq.labels[1:] == b) & (seq.labels[:-1] == b)
            speed[b].append(v[same])
            distance[b].append(d[same])
        missing.append(np.isnan(seq.keypoints[..., 0]).mean())
        assert np.nanmin(seq.keypoints) >= 0 and np.nanmax(seq.keypoints) <= DEMO.arena_px
        body = np.linalg.norm(
            seq.keypoints[:, :, KEYPOINT_INDEX["nose"]]
            - seq.keypoints[:, :, KEYPOINT_INDEX["tail_base"]],
            axis=-1,
        )
        assert 75 < np.nanmean(body) < 105
    rest, explore, chase = (np.nanmean(np.concatenate(speed[b])) for b in range(3))
    assert chase > 2 * rest and chase > 2 * explore and explore > 1.5 * rest
    dist = {b: np.nanmean(np.concatenate(distance[b])) for b in range(3)}
    assert dist[2] < 0.8 * min(dist[0], dist[1])
    assert 0.5 * DEMO.missing_fraction < np.mean(missing) < 1.5 * DEMO.missing_fraction
    labels = np.concatenate([s.labels for s in seqs.values()])
    assert set(np.unique(labels)) == set(range(len(BEHAVIOURS)))


def test_long_format_roundtrip_keeps_unlabelled_sequences() -> None:
    kp = np.random.default_rng(6).uniform(0, 9, (4, 2, 12, 2)).astype(np.float32)
    kp[1, 1, 3] = np.nan
    frame = to_long_frame({"s": PoseSequence(kp, None)})
    assert len(frame) == 4 * 2 * 12 and (frame["behaviour"] == -1).all()
    assert frame.loc[(frame["frame"] == 1) & (frame["agent"] == 1), "keypoint"].tolist() == list(
        KEYPOINTS
    )
