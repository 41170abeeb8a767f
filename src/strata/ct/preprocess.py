"""One CT study to one cached tensor file and one manifest row (docs/design.md §2.2, §3.3).

Steps: MONAI reader -> RAS -> resample to the configured spacing (image trilinear, masks
nearest) -> clip the HU window and map it onto ``out_range`` -> resize to ``shape``; region
crops as Reg2RG makes them: the volume inside the region mask (outside = ``outside_hu``),
cropped to the region's foreground and resized to ``region_shape``.

Cached file (safetensors, written under a temporary name and renamed; stored compactly by
:mod:`strata.ct.cache_format`, whose ``read_study`` returns these tensors):

=================  =====================  ==========================================
tensor             dtype / shape          meaning
=================  =====================  ==========================================
image              dtype [C, H, W, D]     intensities in ``out_range``
masks              uint8 [10, H, W, D]    region masks, ``REGIONS`` order
region_images      dtype [10, C, h, w, d] region crops (zeros where absent)
region_masks       uint8 [10, h, w, d]    region masks cropped/resized the same way
region_present     uint8 [10]             1 where the study has that region
affine             float64 [4, 4]         RAS affine of ``image``/``masks``
=================  =====================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, ScaleIntensityRange
from monai.transforms.utils import generate_spatial_bounding_box

from strata.config import CTPreprocessConfig, config_sha256
from strata.ct.cache_format import pack_study
from strata.ct.load import load_masks, load_volume
from strata.ct.regions import REGIONS
from strata.ct.resample import resample_to_spacing
from strata.io.atomic import sha256_files, write_parquet
from strata.io.tensor_files import save_tensors

#: parquet schema of one manifest row (the merged manifest has one row per study).
MANIFEST_COLUMNS = {
    "study_id": "study identifier (volume name without .nii.gz, or series folder name)",
    "kind": "nifti | dicom",
    "source": "the .nii.gz file or the series folder, as configured",
    "n_files": "number of source files read (slices for DICOM)",
    "source_sha256": "sha256 over the volume files, in reading order",
    "masks_sha256": "sha256 over the region mask files, in REGIONS order",
    "original_spacing": "voxel spacing (mm) of the source, before orientation",
    "original_shape": "voxel shape of the source",
    "n_slices": "number of slices along the source's third axis",
    "regions_present": "regions with a mask",
    "warnings": "problems noted but allowed by the config (e.g. a missing slice)",
    "cache_file": "the cached tensor file",
    "params_sha256": "sha256 of the preprocessing parameters that produced the cache file",
}


@dataclass
class PreprocessedStudy:
    tensors: dict[str, torch.Tensor]
    row: dict[str, object]


def _channels(x: torch.Tensor, cfg: CTPreprocessConfig) -> torch.Tensor:
    """Repeat a single intensity channel to ``cfg.channels`` (Reg2RG feeds 3) and cast."""
    dtype = getattr(torch, cfg.dtype)
    return x.expand(cfg.channels, *x.shape[1:]).to(dtype).contiguous()


def region_crops(image: MetaTensor, masks: MetaTensor, present: np.ndarray, cfg: CTPreprocessConfig,
                 background: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reg2RG region crops: ``[10, 1, h, w, d]`` intensities and ``[10, h, w, d]`` masks.

    ``image`` is already in intensity space, where ``background`` is the value of
    ``outside_hu``; the crop box is the region's foreground (mask and above background).
    """
    crops = torch.zeros((len(REGIONS), 1, *cfg.region_shape), dtype=torch.float32)
    crop_masks = torch.zeros((len(REGIONS), *cfg.region_shape), dtype=torch.uint8)
    resize_image = Resize(cfg.region_shape, mode="area")
    resize_mask = Resize(cfg.region_shape, mode="nearest")
    for k in np.flatnonzero(present):
        mask = masks.as_tensor()[k : k + 1].bool()
        if not mask.any():
            continue
        region = torch.where(mask, image.as_tensor(), torch.tensor(background))
        foreground = mask & (region > background)
        start, end = generate_spatial_bounding_box(foreground if foreground.any() else mask)
        box = (slice(None), *(slice(s, e) for s, e in zip(start, end)))
        crops[k] = resize_image(region[box])
        crop_masks[k] = (resize_mask(mask[box].float())[0] > 0.5).to(torch.uint8)
    return crops, crop_masks


def preprocess_study(study_id: str, kind: Literal["nifti", "dicom"], files: list[Path],
                     masks: dict[str, Path], cfg: CTPreprocessConfig) -> PreprocessedStudy:
    """Read, check and transform one study; nothing is written here."""
    volume = load_volume(kind, files, cfg)
    mask_stack, present, mask_notes = load_masks(masks, volume.image)
    hu = resample_to_spacing(volume.image, cfg.spacing, "bilinear")
    resampled_masks = resample_to_spacing(mask_stack, cfg.spacing, "nearest")
    (lo, hi), (out_lo, out_hi) = cfg.hu_window, cfg.out_range
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=out_lo, b_max=out_hi, clip=True)
    intensity = scale(hu)
    background = float(scale(torch.tensor([cfg.outside_hu]))[0])
    crops, crop_masks = region_crops(intensity, resampled_masks, present, cfg, background)
    image = Resize(cfg.shape, mode="area")(intensity)
    out_masks = Resize(cfg.shape, mode="nearest")(resampled_masks.float())
    tensors = {
        "image": _channels(image.as_tensor(), cfg),
        "masks": (out_masks.as_tensor() > 0.5).to(torch.uint8),
        "region_images": crops.expand(-1, cfg.channels, *cfg.region_shape).to(getattr(torch, cfg.dtype)).contiguous(),
        "region_masks": crop_masks,
        "region_present": torch.from_numpy(present),
        "affine": torch.as_tensor(np.asarray(image.affine, dtype=np.float64)),
    }
    source = volume.files[0] if kind == "nifti" else volume.files[0].parent
    row = {
        "study_id": study_id,
        "kind": kind,
        "source": str(source),
        "n_files": len(volume.files),
        "source_sha256": sha256_files(volume.files),
        "masks_sha256": sha256_files([masks[r] for r in REGIONS if r in masks]),
        "original_spacing": list(volume.original_spacing),
        "original_shape": list(volume.original_shape),
        "n_slices": volume.n_slices,
        "regions_present": [r for r, p in zip(REGIONS, present) if p],
        "warnings": [*volume.warnings, *mask_notes],
        "params_sha256": config_sha256(cfg),
    }
    return PreprocessedStudy(tensors, row)


def run_preprocess_ct(study_id: str, kind: Literal["nifti", "dicom"], files: list[Path], masks: dict[str, Path],
                      cfg: CTPreprocessConfig, cache_file: Path, row_file: Path) -> None:
    """Preprocess one study and write its cache file and manifest row, both atomically."""
    result = preprocess_study(study_id, kind, files, masks, cfg)
    result.row["cache_file"] = str(cache_file)
    stored, layout = pack_study(result.tensors)
    save_tensors(stored, cache_file, metadata={
        "study_id": study_id, "source_sha256": result.row["source_sha256"],
        "params_sha256": result.row["params_sha256"], **layout}, written_by="preprocess_ct")
    write_parquet(pd.DataFrame([result.row], columns=list(MANIFEST_COLUMNS)), row_file)


def merge_manifest(row_files: list[Path], manifest: Path) -> None:
    """One manifest table from the per-study rows, sorted by study id."""
    frame = pd.concat([pd.read_parquet(p) for p in row_files], ignore_index=True)
    write_parquet(frame.sort_values("study_id", kind="stable").reset_index(drop=True), manifest)
