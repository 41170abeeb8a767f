"""MABe22-format files: the track and test-label writers and the safe, checked label reader."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from strata.pose.errors import PoseFormatError
from strata.pose.labels import check_overlap, read_task_labels
from strata.pose.mabe22_files import FakeTask, write_mabe22_test_labels, write_mabe22_tracks
from strata.pose.readers import read_pose_file

LENGTHS = {"b": 30, "a": 50, "c": 20}  # frame map order = this order, not sorted


def _save(path: Path, data: object) -> Path:
    np.save(path, data, allow_pickle=True)  # writing test fixtures only
    return path


def _labels(path: Path, **changes: object) -> Path:
    """A small valid label file as a dict, with ``changes`` applied (None deletes a key)."""
    data = {"vocabulary": ["chases", "strain", "time_of_day"], "task_type": ["Discrete", "Discrete", "Continuous"],
            "label_array": np.zeros((3, 100), np.float32),
            "frame_number_map": {"s0": (0, 60), "s1": (60, 100)}}
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return _save(path, data)


def test_track_writer_is_mabe22_shaped_deterministic_and_label_free(tmp_path):
    names = write_mabe22_tracks(tmp_path / "a.npy", 3, 120, seed=5)
    assert names == {"mabe0000": 120, "mabe0001": 120, "mabe0002": 120}
    write_mabe22_tracks(tmp_path / "b.npy", 3, 120, seed=5)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    sequences = read_pose_file(tmp_path / "a.npy")
    assert list(sequences) == list(names)
    for seq in sequences.values():
        assert seq.keypoints.shape == (120, 3, 12, 2) and seq.keypoints.dtype == np.float32
        assert seq.labels is None and np.isnan(seq.keypoints).any()  # no labels, NaN gaps
    write_mabe22_tracks(tmp_path / "c.npy", 2, 120, seed=5, with_labels=True)
    labelled = read_pose_file(tmp_path / "c.npy")
    assert all(seq.labels is not None and seq.labels.shape == (120,) for seq in labelled.values())
    np.testing.assert_array_equal(labelled["mabe0000"].keypoints, sequences["mabe0000"].keypoints)


def test_label_writer_round_trips_through_the_reader(tmp_path):
    path = tmp_path / "labels.npy"
    write_mabe22_test_labels(path, LENGTHS, seed=1)
    labels = read_task_labels(path)
    assert labels.frame_number_map == {"b": (0, 30), "a": (30, 80), "c": (80, 100)}
    assert labels.label_array.shape == (5, 100)
    kinds = {t.name: (t.kind, t.sequence_level) for t in labels.tasks}
    assert kinds == {"chases": ("discrete", False), "huddles": ("discrete", False),
                     "oral_oral_contact": ("discrete", False), "time_of_day": ("continuous", False),
                     "strain": ("discrete", True)}  # strain: MABe22's sequence-level list
    chases, strain = labels.tasks[0], labels.tasks[4]
    assert np.isnan(labels.label_array[chases.row]).any() and not np.isnan(labels.label_array[strain.row]).any()
    # (sequence, frame) -> the column start + frame of label_array; -1 for unknown sequences
    columns = labels.frame_columns(np.array(["a", "a", "c", "zz"]), np.array([0, 49, 3, 7]))
    assert columns.tolist() == [30, 79, 83, -1]
    targets = labels.targets(chases, columns)
    np.testing.assert_array_equal(targets[:3], labels.label_array[chases.row, [30, 79, 83]])
    assert np.isnan(targets[3])
    with pytest.raises(PoseFormatError, match=r"sequence 'a' has 50 frames.*frame 50") as err:
        labels.frame_columns(np.array(["a"]), np.array([50]))
    assert str(path) in str(err.value)
    per_seq = labels.sequence_targets(strain, ["a", "b", "zz"])
    assert per_seq[0] == labels.label_array[strain.row, 30] and np.isnan(per_seq[2])
    # an explicit sequence_level_tasks key (not in MABe22's files) overrides the default list
    write_mabe22_test_labels(path, LENGTHS, seed=1, tasks=[FakeTask("a", "Discrete", True), FakeTask("b", "Continuous")],
                             sequence_level_key=True)
    assert [(t.name, t.sequence_level) for t in read_task_labels(path).tasks] == [("a", True), ("b", False)]


def test_sequence_targets_majority_and_mean(tmp_path):
    array = np.array([[0, 1, 1, np.nan, 0, 0, 1, 1, 2, 2], [0.5, 1.5, np.nan, 4.0, 1, 1, 1, 1, 1, 1]])
    labels = read_task_labels(_labels(tmp_path / "l.npy", vocabulary=["d", "c"], task_type=["Discrete", "Continuous"],
                                      label_array=array, frame_number_map={"x": (0, 4), "y": (4, 10)}))
    d, c = labels.tasks
    assert labels.sequence_targets(d, ["x", "y"]).tolist() == [1.0, 2.0]  # x: 1 beats 0; y: tie 0/1/2 -> largest
    assert labels.sequence_targets(c, ["x"]).tolist() == [2.0]  # mean of the labelled frames


@pytest.mark.parametrize("changes, problem", [
    ({"frame_number_map": None}, r"missing key\(s\) 'frame_number_map'"),
    ({"task_type": None, "label_array": None}, r"missing key\(s\) 'task_type', 'label_array'"),
    ({"label_array": np.zeros((3, 80), np.float32)}, r"'label_array' has 80 frames.*'s1' at frames 60-100"),
    ({"label_array": np.zeros((2, 100), np.float32)}, r"'label_array' has 2 rows but 'vocabulary' 3"),
    ({"task_type": ["Discrete", "Binary", "Continuous"]}, r"task 'strain' has task_type 'Binary'"),
    ({"label_array": np.full((3, 100), 0.5, np.float32)}, r"task 'chases' is Discrete but has non-integer"),
    ({"frame_number_map": {"s0": (10, 5)}}, r"'frame_number_map'\['s0'\] must be \(start, end\)"),
    ({"vocabulary": ["a", "a", "b"]}, r"distinct task names"),
    ({"sequence_level_tasks": ["nope"]}, r"'sequence_level_tasks' must list tasks"),
])
def test_bad_label_files_name_the_file_and_the_problem(tmp_path, changes, problem):
    path = _labels(tmp_path / "bad.npy", **changes)
    with pytest.raises(PoseFormatError, match=problem) as err:
        read_task_labels(path)
    assert str(path) in str(err.value)


def test_label_file_is_read_without_running_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = _save(tmp_path / "evil.npy", {"vocabulary": ["a"], "task_type": ["Discrete"], "label_array": Evil(),
                                         "frame_number_map": {}})
    with pytest.raises(PoseFormatError, match="refused") as err:
        read_task_labels(path)
    assert str(path) in str(err.value) and not marker.exists()
    with pytest.raises(PoseFormatError, match="expected a dict"):
        read_task_labels(_save(tmp_path / "array.npy", np.zeros(3)))


def test_overlap_with_the_pose_data(tmp_path, caplog):
    path = tmp_path / "labels.npy"
    write_mabe22_test_labels(path, LENGTHS, seed=0)
    labels = read_task_labels(path)
    with caplog.at_level(logging.WARNING):
        assert check_overlap(labels, ["c", "a", "q", "a"], "pose.npy") == ["a", "c"]
    assert "1 of its 3 sequences are not in the pose data pose.npy" in caplog.text and "['b']" in caplog.text
    with pytest.raises(PoseFormatError, match=r"none of its 3 sequences.*in the pose data pose\.npy") as err:
        check_overlap(labels, ["x", "y"], "pose.npy")
    assert str(path) in str(err.value)
