"""Which CT studies exist and which files belong to each.

The DAG must know every study before any job runs. For the synthetic demo the study list
follows from the config (the demo plan is a pure function of the seed); for real data it
is read off the RadGenome-ChestCT folder layout

    <nifti_root>/<split>_preprocessed/<patient>/<accession>/<volume>.nii.gz
    <nifti_root>/<split>_region_mask/seg_<volume>/<region>.nii.gz

and off a DICOM root holding one folder per series (masks under
``<dicom_mask_root>/seg_<folder>/<region>.nii.gz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strata.config import CTDataConfig, DemoCTConfig
from strata.ct.demo_plan import demo_plan
from strata.ct.regions import REGIONS, mask_file_name

NIFTI_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class Study:
    """One CT study: its volume files and the region masks that exist for it."""

    study_id: str
    kind: Literal["nifti", "dicom"]
    files: tuple[Path, ...]  # the .nii.gz file, or every slice of the series folder
    masks: tuple[tuple[str, Path], ...]  # (region, mask path) for the regions present

    @property
    def source(self) -> Path:
        """The volume file (NIfTI) or the series folder (DICOM)."""
        return self.files[0] if self.kind == "nifti" else self.files[0].parent


def nifti_volume_path(data: CTDataConfig, volume: str) -> Path:
    """``<root>/<split>_preprocessed/<patient>/<accession>/<volume>.nii.gz`` (CT-RATE naming)."""
    patient, accession = volume.rsplit("_", 2)[0], volume.rsplit("_", 1)[0]
    return data.nifti_root / f"{data.split}_preprocessed" / patient / accession / f"{volume}{NIFTI_SUFFIX}"


def nifti_mask_dir(data: CTDataConfig, volume: str) -> Path:
    return data.nifti_root / f"{data.split}_region_mask" / f"seg_{volume}"


def dicom_mask_dir(data: CTDataConfig, series: str) -> Path:
    assert data.dicom_mask_root is not None
    return data.dicom_mask_root / f"seg_{series}"


def dicom_slice_name(index: int) -> str:
    return f"slice_{index:04d}.dcm"


def demo_studies(data: CTDataConfig, demo: DemoCTConfig, seed: int) -> list[Study]:
    """The studies the demo writer will produce, known before it runs."""
    studies = []
    for plan in demo_plan(data, demo, seed):
        masks_dir = (nifti_mask_dir(data, plan.study_id) if plan.kind == "nifti"
                     else dicom_mask_dir(data, plan.study_id))
        masks = tuple((r, masks_dir / mask_file_name(r)) for r in REGIONS if r in plan.regions)
        if plan.kind == "nifti":
            files: tuple[Path, ...] = (nifti_volume_path(data, plan.study_id),)
        else:
            assert data.dicom_root is not None
            folder = data.dicom_root / plan.study_id
            files = tuple(folder / dicom_slice_name(k) for k in range(demo.shape[2]))
        studies.append(Study(plan.study_id, plan.kind, files, masks))
    return studies


def _masks_in(folder: Path) -> tuple[tuple[str, Path], ...]:
    """Region masks present in ``folder``; a file named after no region is an error."""
    if not folder.is_dir():
        return ()
    found = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        region = path.name.removesuffix(NIFTI_SUFFIX)
        if not path.name.endswith(NIFTI_SUFFIX) or region not in REGIONS:
            raise ValueError(f"{path}: not a region mask (expected one of {list(REGIONS)} + '.nii.gz')")
        found[region] = path
    return tuple((r, found[r]) for r in REGIONS if r in found)


def discover_studies(data: CTDataConfig) -> list[Study]:
    """Scan real data in the published layout (no file is opened, names only)."""
    studies = []
    volumes = sorted((data.nifti_root / f"{data.split}_preprocessed").glob(f"*/*/*{NIFTI_SUFFIX}"))
    for volume_path in volumes:
        volume = volume_path.name.removesuffix(NIFTI_SUFFIX)
        studies.append(Study(volume, "nifti", (volume_path,), _masks_in(nifti_mask_dir(data, volume))))
    if data.dicom_root is not None:
        for folder in sorted(p for p in data.dicom_root.iterdir() if p.is_dir()):
            files = tuple(sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")))
            if not files:
                continue
            masks = _masks_in(dicom_mask_dir(data, folder.name)) if data.dicom_mask_root else ()
            studies.append(Study(folder.name, "dicom", files, masks))
    ids = [s.study_id for s in studies]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"study ids found twice (NIfTI and DICOM?): {duplicated}")
    return studies


def study_from_inputs(files: list[str], masks: list[str]) -> tuple[Literal["nifti", "dicom"], dict[str, Path]]:
    """Recover a study's kind and region->mask map from a rule's input file lists."""
    kind: Literal["nifti", "dicom"] = "nifti" if len(files) == 1 and files[0].endswith(NIFTI_SUFFIX) else "dicom"
    mask_map = {Path(m).name.removesuffix(NIFTI_SUFFIX): Path(m) for m in masks}
    return kind, mask_map
