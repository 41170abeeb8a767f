"""The ten anatomical regions of RadGenome-ChestCT, in the order used everywhere."""

from __future__ import annotations

REGIONS: tuple[str, ...] = (
    "abdomen",
    "bone",
    "breast",
    "esophagus",
    "heart",
    "lung",
    "mediastinum",
    "pleura",
    "thyroid",
    "trachea and bronchie",
)
REGION_INDEX: dict[str, int] = {name: i for i, name in enumerate(REGIONS)}


def mask_file_name(region: str) -> str:
    """RadGenome names each region mask after the region: ``seg_<volume>/<region>.nii.gz``."""
    return f"{region}.nii.gz"
