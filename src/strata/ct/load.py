"""Reading a study with MONAI's readers into RAS-oriented tensors, with input checks.

Volumes come in as float32 HU ``[1, X, Y, Z]``; region masks as one uint8 tensor
``[10, X, Y, Z]`` in ``REGIONS`` order (zeros plus a presence flag for absent regions), so
the ten masks are oriented and resampled in one pass instead of ten.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.transforms import LoadImage, Orientation

from strata.config import CTPreprocessConfig
from strata.ct.dicom_series import check_series
from strata.ct.errors import CTInputError
from strata.ct.regions import REGION_INDEX, REGIONS
from strata.ct.resample import resample_axis

RAS = Orientation(axcodes="RAS", labels=None)


@dataclass
class LoadedVolume:
    """A volume in RAS with the facts the manifest records about its source."""

    image: MetaTensor  # [1, X, Y, Z] float32 HU
    original_spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]
    n_slices: int
    files: list[Path]  # the source files actually read, in reading order
    warnings: list[str] = field(default_factory=list)


def _quiet_load(loader: LoadImage, source: str | list[str]) -> MetaTensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's reader warnings are re-checked explicitly
        return loader(source)


def load_volume(kind: Literal["nifti", "dicom"], files: list[Path], cfg: CTPreprocessConfig) -> LoadedVolume:
    """Read a NIfTI file or a checked DICOM series and orient it to RAS."""
    notes: list[str] = []
    series = None
    if kind == "dicom":
        series = check_series(files, cfg.multiple_series, cfg.on_missing_slice, cfg.spacing_tolerance,
                              cfg.on_missing_rescale)
        notes.extend(series.warnings)
        folder = series.files[0].parent
        # MONAI reads a folder as one series; restrict it to the checked slices.
        pattern = "^(?:" + "|".join(re.escape(str(p)) for p in series.files) + ")$"
        reader = PydicomReader(fname_regex=pattern)
        source, read_files = str(folder), series.files
    else:
        reader = NibabelReader()
        source, read_files = str(files[0]), list(files)
    try:
        image = _quiet_load(LoadImage(reader=reader, image_only=True, ensure_channel_first=True,
                                      dtype=np.float32), source)
    except CTInputError:
        raise
    except Exception as err:
        raise CTInputError(f"{source}: cannot read volume ({type(err).__name__}: {err})") from err
    if image.ndim != 4 or image.shape[0] != 1:
        raise CTInputError(f"{source}: expected a single-channel 3-D volume, got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        bad = int((~torch.isfinite(image)).sum())
        raise CTInputError(f"{source}: volume contains {bad} NaN/inf voxels")
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
    shape = tuple(int(s) for s in image.shape[1:])
    check_geometry(source, np.asarray(image.affine, dtype=np.float64), shape, cfg)
    if series is not None and series.has_gaps:
        image = fill_missing_slices(image, series.positions, series.slice_spacing)
        spacing = (*spacing[:2], series.slice_spacing)
    oriented = RAS(image)
    return LoadedVolume(oriented, spacing, shape, shape[2], read_files, notes)


def check_geometry(source: str, affine: np.ndarray, shape: tuple[int, ...], cfg: CTPreprocessConfig) -> None:
    """Refuse a singular affine, and voxels or a field of view beyond the configured limits,
    before anything is resampled (400 mm voxels would make resampling allocate ~1 TB)."""
    linear = affine[:3, :3]
    if not np.all(np.isfinite(linear)) or abs(np.linalg.det(linear)) < 1e-6:
        raise CTInputError(f"{source}: the voxel-to-world affine is singular or not finite, so the volume has no "
                           f"orientation:\n{affine}")
    voxel = np.linalg.norm(linear, axis=0)
    extent = voxel * np.asarray(shape)
    if voxel.max() > cfg.max_voxel_mm:
        raise CTInputError(f"{source}: voxel size {np.round(voxel, 3).tolist()} mm exceeds max_voxel_mm "
                           f"{cfg.max_voxel_mm:g} (preprocess.ct.max_voxel_mm)")
    if extent.max() > cfg.max_extent_mm:
        raise CTInputError(f"{source}: field of view {np.round(extent, 1).tolist()} mm exceeds max_extent_mm "
                           f"{cfg.max_extent_mm:g} (preprocess.ct.max_extent_mm)")


def fill_missing_slices(image: MetaTensor, positions: np.ndarray, spacing: float) -> MetaTensor:
    """Put a series with missing slices back on its uniform grid (linear along the normal).

    MONAI stacks the slices it has and spreads them evenly between the first and last
    position, which would stretch every slice after a gap; here the stack is resampled
    at the uniform positions, so the volume keeps its geometry and matches its masks.
    """
    step = spacing if positions[-1] > positions[0] else -spacing
    n_full = round((positions[-1] - positions[0]) / step) + 1
    targets = positions[0] + step * np.arange(n_full)
    source_index = np.interp(targets * np.sign(step), positions * np.sign(step), np.arange(len(positions)))
    data = resample_axis(image.as_tensor(), 3, source_index, "bilinear")
    affine = image.affine.clone()
    affine[:3, 2] *= (len(positions) - 1) / (n_full - 1)
    return MetaTensor(data, affine=affine, meta=dict(image.meta))


def check_mask_values(mask: torch.Tensor, path: Path) -> None:
    """A region mask is one 3-D volume of 0 and one label value: a probability map, several
    labels or NaN would otherwise be binarised (or truncated to 0) without a word."""
    if mask.ndim != 4 or mask.shape[0] != 1:  # LoadImage put any 4th axis first
        raise CTInputError(f"{path}: expected one 3-D mask, got {mask.shape[0]} volumes of shape "
                           f"{tuple(mask.shape[1:])}")
    if not torch.isfinite(mask).all():
        raise CTInputError(f"{path}: mask holds {int((~torch.isfinite(mask)).sum())} NaN/inf values")
    labels = torch.unique(mask[mask != 0])
    if len(labels) > 1 or (len(labels) and labels[0] != labels[0].round()):
        shown = ", ".join(f"{v:g}" for v in labels[:5].tolist())
        raise CTInputError(f"{path}: mask values must be 0 and one integer label, found non-zero values {shown}"
                           f"{' ...' if len(labels) > 5 else ''} (a probability map or a multi-label mask?)")


def load_masks(masks: dict[str, Path], reference: MetaTensor) -> tuple[MetaTensor, np.ndarray, list[str]]:
    """Stack the region masks into ``[10, X, Y, Z]`` uint8 (RAS), a presence vector and
    warnings (a region given but empty).

    Each mask must have the volume's shape and affine once both are in RAS.
    """
    stacked = torch.zeros((len(REGIONS), *reference.shape[1:]), dtype=torch.uint8)
    present = np.zeros(len(REGIONS), dtype=np.uint8)
    notes: list[str] = []
    loader = LoadImage(reader=NibabelReader(), image_only=True, ensure_channel_first=True, dtype=np.float32)
    ref_affine = np.asarray(reference.affine, dtype=np.float64)
    for region, path in masks.items():
        if region not in REGION_INDEX:
            raise CTInputError(f"{path}: {region!r} is not one of the regions {list(REGIONS)}")
        try:
            raw = _quiet_load(loader, str(path))
        except Exception as err:
            raise CTInputError(f"{path}: cannot read mask ({type(err).__name__}: {err})") from err
        check_mask_values(raw.as_tensor(), path)
        mask = RAS(raw)
        if tuple(mask.shape[1:]) != tuple(reference.shape[1:]):
            raise CTInputError(f"{path}: mask shape {tuple(mask.shape[1:])} does not match the volume's "
                               f"{tuple(reference.shape[1:])}")
        if not np.allclose(np.asarray(mask.affine, dtype=np.float64), ref_affine, atol=1e-3):
            raise CTInputError(f"{path}: mask affine does not match the volume's affine (in RAS)\n"
                               f"mask:\n{np.asarray(mask.affine)}\nvolume:\n{ref_affine}")
        stacked[REGION_INDEX[region]] = (mask.as_tensor()[0] != 0).to(torch.uint8)
        present[REGION_INDEX[region]] = 1
        if not stacked[REGION_INDEX[region]].any():
            notes.append(f"region {region}: mask {path.name} is empty")
    return MetaTensor(stacked, affine=reference.affine.clone(), meta={"space": "RAS"}), present, notes
