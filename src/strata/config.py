"""Typed configuration objects built from the validated YAML.

The Snakefile validates the whole config against ``config/schema.yaml``; rules then pass
only the subset they depend on (so Snakemake's params trigger re-runs precisely), and the
entry points turn that subset into one of the frozen dataclasses below with
:func:`from_dict`. Unknown or missing keys raise here too, so code never receives a raw
dict that could hide a misspelled option.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from strata.evaluation.config import EvaluationConfig
from strata.reg2rg.config import Reg2RGConfig
from strata.training.config import MonitorConfig, TrainConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Written by hand (not dacite/pydantic) because it is a few lines and the schema has
    already checked the values; this only maps them onto types and names the key path of
    anything unexpected.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key {name!r}")
            continue
        values[name] = _convert(hints[name], data[name], f"{where}.{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as err:  # a cross-field check in __post_init__
        raise ConfigError(f"{where}: {err}") from err


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if value_type is Any:
            return dict(value)
        return {str(k): _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config object (for params, meta.json and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_sha256(obj: Any) -> str:
    """Content hash of a config object or plain mapping (part of every cache key)."""
    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class CTDataConfig:
    """Where CT studies live (RadGenome-ChestCT layout plus DICOM series folders)."""

    split: str
    nifti_root: Path
    reports: Path
    dicom_root: Path | None = None
    dicom_mask_root: Path | None = None


@dataclass(frozen=True)
class PoseDataConfig:
    """Where the pose tracks live: a MABe22 ``.npy`` dict or a long ``.parquet``/``.csv``.

    ``labels`` (optional): a label file in MABe22's test-label format
    (``mouse_triplets_test_labels.npy``, :mod:`strata.pose.labels`) whose tasks the pose
    embedding probes predict; None: only the pose file's own per-frame labels, if any.
    """

    path: Path
    labels: Path | None = None


@dataclass(frozen=True)
class DataConfig:
    demo: bool
    ct: CTDataConfig
    pose: PoseDataConfig


# --------------------------------------------------------------------------- demo data


@dataclass(frozen=True)
class DemoCTConfig:
    """Size of the synthetic CT demo (RadGenome-style NIfTI studies plus DICOM series)."""

    n_nifti: int
    n_dicom: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    noise_hu: float


@dataclass(frozen=True)
class DemoPoseConfig:
    """Size of the synthetic MABe22-style mouse-triplet demo (its labels at three time
    scales: :mod:`strata.pose.demo`)."""

    n_sequences: int
    n_frames: int
    n_agents: int
    n_keypoints: int
    arena_px: float
    missing_fraction: float


@dataclass(frozen=True)
class DemoConfig:
    ct: DemoCTConfig
    pose: DemoPoseConfig


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class CTPreprocessConfig:
    """How a CT study becomes a cached tensor (docs/design.md §2.2, §3.3).

    Args:
        spacing: target voxel spacing in mm after orientation to RAS.
        shape: (H, W, D) of the cached volume after resampling.
        region_shape: (H, W, D) of each cached region crop.
        channels: the volume is repeated to this many channels (Reg2RG uses 3).
        hu_window: HU values are clipped to this window ...
        out_range: ... and mapped linearly onto this range.
        outside_hu: value given to voxels outside a region mask in region crops.
        dtype: storage dtype of the cached intensities.
        on_missing_slice: a gap of missing slices in a DICOM series is an error, or a
            warning recorded in the manifest.
        multiple_series: a folder holding several series is an error, or the largest
            series is used (recorded as a warning).
        spacing_tolerance: relative deviation allowed between consecutive slice gaps.
        on_missing_rescale: a DICOM slice without RescaleSlope/RescaleIntercept is an error,
            or its stored values are taken as HU (``identity``; recorded as a warning).
        max_voxel_mm: a source voxel larger than this on any axis is refused (a corrupt
            header would otherwise make resampling allocate terabytes).
        max_extent_mm: a source field of view larger than this on any axis is refused.
        shards: the studies are spread over this many jobs of each per-study stage
            (preprocess_ct_<shard>, reg2rg_token_cache_<shard>; :mod:`strata.ct.shards`).
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    region_shape: tuple[int, int, int]
    channels: int
    hu_window: tuple[float, float]
    out_range: tuple[float, float]
    outside_hu: float
    dtype: Literal["float16", "float32"]
    on_missing_slice: Literal["error", "warn"]
    multiple_series: Literal["error", "largest"]
    spacing_tolerance: float
    on_missing_rescale: Literal["error", "identity"]
    max_voxel_mm: float
    max_extent_mm: float
    shards: int

    def __post_init__(self) -> None:
        low, high = self.hu_window
        if not low < high:
            raise ValueError(f"hu_window [{low:g}, {high:g}]: the lower bound must be below the upper one")
        if self.out_range[0] == self.out_range[1]:
            raise ValueError(f"out_range [{self.out_range[0]:g}, {self.out_range[1]:g}] maps every voxel to one value")


@dataclass(frozen=True)
class PosePreprocessConfig:
    """How pose tracks become fixed windows (docs/design.md §2.3, §3.6).

    Args:
        window: frames per window (T).
        stride: frames between window starts.
        center: ``arena`` maps pixel coordinates to [-1, 1] around the arena centre.
        arena_px: side length of the arena in pixels (MABe22: 850).
        egocentric: rotate and translate every agent into its own body frame.
        min_valid_fraction: windows with fewer observed keypoints are dropped.
        shard_size: windows per shard file.
    """

    window: int
    stride: int
    center: Literal["arena", "none"]
    arena_px: float
    egocentric: bool
    min_valid_fraction: float
    shard_size: int


@dataclass(frozen=True)
class PreprocessConfig:
    ct: CTPreprocessConfig
    pose: PosePreprocessConfig


@dataclass(frozen=True)
class ModelRunConfig:
    """One training run of a model family (``models.<family>.<run>``).

    ``architecture`` stays a mapping here (the schema has checked it); the family's own
    module turns it into its typed architecture config, so this module needs no torch.
    ``unit`` is what one training sample is: a cached pose ``windows`` item (every family),
    or a whole pose sequence of any length (``sequences``: pose VAE on pose data only;
    batches are padded with a frame mask, never truncated).
    """

    data: Literal["pose", "ct"]
    architecture: dict[str, Any]
    train: TrainConfig
    unit: Literal["windows", "sequences"] = "windows"


@dataclass(frozen=True)
class StrataConfig:
    """The whole validated configuration."""

    seed: int
    data: DataConfig
    demo: DemoConfig
    preprocess: PreprocessConfig
    models: dict[str, dict[str, ModelRunConfig]]
    reg2rg: Reg2RGConfig
    evaluation: EvaluationConfig
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)  # what training jobs show


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps
    the last silently, so a pasted-over setting would win unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Parse a config file; an unreadable or malformed file, or a key given twice, is an
    error naming the file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config file: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, found {type(raw).__name__}")
    return raw


def load_config(path: str | Path) -> StrataConfig:
    """Read a YAML file, validate it against the schema and build the typed config."""
    from strata.schema import validate_config

    raw = read_yaml(path)
    validate_config(raw, source=str(path))
    return from_dict(StrataConfig, raw, where=str(path))
