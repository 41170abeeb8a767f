"""The restricted .npy unpickler: loads plain MABe22-style dicts, refuses anything else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strata.config import DemoPoseConfig
from strata.io.safe_npy import UnsafeNpyError, load_npy_safely
from strata.pose.demo import generate_demo_pose, to_mabe_dict, write_demo_pose
from strata.pose.errors import PoseFormatError
from strata.pose.readers import read_pose_file

DEMO = DemoPoseConfig(
    n_sequences=3, n_frames=120, n_agents=3, n_keypoints=12, arena_px=850.0, missing_fraction=0.05
)


class _RunsShell:
    """Pickles as a call to os.system (what a malicious file would contain)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@dataclass
class _UserClass:
    value: int = 1


def _save_pickled(path: Path, obj: object) -> Path:
    np.save(path, obj, allow_pickle=True)  # writing test fixtures only
    return path


def _assert_same(a: object, b: object) -> None:
    """Deep equality for nested dicts/lists of arrays (NaN == NaN, same dtype)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_demo_file_loads_and_equals_data(tmp_path: Path) -> None:
    npy = tmp_path / "pose.npy"
    write_demo_pose(DEMO, 7, npy, tmp_path / "pose.parquet")
    loaded = load_npy_safely(npy)
    _assert_same(to_mabe_dict(generate_demo_pose(DEMO, 7)), loaded)


def test_plain_numeric_npy_loads_without_pickle(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "plain.npy"
    np.save(path, arr, allow_pickle=False)
    out = load_npy_safely(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


def test_numpy_scalars_and_containers_are_accepted(tmp_path: Path) -> None:
    data = {
        "a": [1, 2.5, "x", None, True],
        "b": (np.float32(1.5), np.int64(3)),
        "c": {"nested": np.zeros((2, 2), np.int16)},
    }
    loaded = load_npy_safely(_save_pickled(tmp_path / "ok.npy", data))
    _assert_same(data, loaded)


def test_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save_pickled(
        tmp_path / "evil.npy", {"sequences": {"s": {"keypoints": _RunsShell(f"touch {marker}")}}}
    )
    with pytest.raises(UnsafeNpyError) as err:
        load_npy_safely(path)
    assert str(path) in str(err.value)
    assert f"{os.system.__module__}.system" in str(err.value)  # posix.system on Linux
    with pytest.raises(PoseFormatError, match="refused to unpickle global") as err2:
        read_pose_file(path)
    assert str(path) in str(err2.value)
    assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path: Path) -> None:
    path = _save_pickled(tmp_path / "eval.npy", {"x": _CallsEval()})
    with pytest.raises(UnsafeNpyError, match=r"builtins\.eval") as err:
        load_npy_safely(path)
    assert str(path) in str(err.value)


def test_user_class_is_refused(tmp_path: Path) -> None:
    path = _save_pickled(tmp_path / "user.npy", {"x": _UserClass()})
    with pytest.raises(UnsafeNpyError, match="_UserClass"):
        load_npy_safely(path)


def test_nested_object_array_is_refused(tmp_path: Path) -> None:
    path = _save_pickled(tmp_path / "objarr.npy", {"x": np.array([1, "a"], dtype=object)})
    with pytest.raises(UnsafeNpyError, match="object array"):
        load_npy_safely(path)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    good = _save_pickled(tmp_path / "good.npy", {"x": np.zeros(100)})
    bad = tmp_path / "truncated.npy"
    bad.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(UnsafeNpyError) as err:
        load_npy_safely(bad)
    assert str(bad) in str(err.value)


def test_not_an_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(UnsafeNpyError, match=r"junk\.npy"):
        load_npy_safely(path)


def _object_npy(path: Path, obj: object) -> Path:
    holder = np.empty((), dtype=object)
    holder[()] = obj
    return _save_pickled(path, holder)


def test_shared_references_are_checked_once_and_the_nesting_bomb_is_refused_by_name(tmp_path):
    """``x = [x, x]`` repeated: 2^n leaves as a tree, n + 1 lists as a graph (a ~500-byte file)."""
    import time

    x: list = []
    for _ in range(30):
        x = [x, x]
    loaded = load_npy_safely(_object_npy(tmp_path / "dag.npy", x))  # 2^30 as a tree; each list walked once
    assert loaded[0] is loaded[1]
    for _ in range(10):
        x = [x, x]
    path = _object_npy(tmp_path / "bomb.npy", x)
    assert path.stat().st_size < 1000
    start = time.monotonic()
    with pytest.raises(UnsafeNpyError, match=r"bomb\.npy: pickled data nested deeper than 32 levels"):
        load_npy_safely(path)
    assert time.monotonic() - start < 1.0


def test_a_self_containing_list_is_refused_by_name(tmp_path):
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(UnsafeNpyError, match=r"cycle\.npy: the pickled data contains itself at <root>\['sequences'\]\[0\]"):
        load_npy_safely(_object_npy(tmp_path / "cycle.npy", {"sequences": cycle}))


def test_a_header_declaring_more_data_than_the_file_holds_is_refused_before_allocating(tmp_path):
    from numpy.lib import format as npy_format

    path = tmp_path / "forged.npy"
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
        fh.write(np.zeros(2).tobytes())
    with pytest.raises(UnsafeNpyError, match=r"forged\.npy: header declares shape \(1000000000000,\) of float64 "
                                             r"\(8,000,000,000,000 bytes\) but the file holds 16 bytes"):
        load_npy_safely(path)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.arange(100.0))
    truncated.write_bytes(truncated.read_bytes()[:-8])
    with pytest.raises(UnsafeNpyError, match=r"truncated\.npy: header declares shape \(100,\)"):
        load_npy_safely(truncated)
