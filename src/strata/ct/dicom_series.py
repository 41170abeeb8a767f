"""Checks a folder of DICOM slices before MONAI reads it, from the headers alone.

MONAI's ``PydicomReader`` stacks whatever files a folder holds, sorted by InstanceNumber,
and derives the slice spacing from the average gap; a second series, a missing slice or
an uneven gap would silently produce a wrong volume. This module reads the headers only
(``stop_before_pixels``), groups slices by SeriesInstanceUID, sorts them along the slice
normal and checks modality, pixel data, geometry and gaps, so every problem is an error
naming the file (or a warning recorded in the manifest, where the config allows it).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

from strata.ct.errors import CTInputError

PIXEL_DATA_TAG = 0x7FE00010
ELEMENT_HEADER_BYTES = 12  # explicit VR OB/OW: tag (4) + VR (2) + reserved (2) + length (4)


@dataclass(frozen=True)
class SliceHeader:
    path: Path
    series_uid: str
    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray  # ImageOrientationPatient (6 direction cosines)
    instance: int
    pixel_spacing: tuple[float, float]  # PixelSpacing (row, column), mm
    rescaled: bool  # RescaleSlope and RescaleIntercept present


@dataclass
class SeriesCheck:
    """The slices MONAI should read (sorted by position) and what was noticed on the way."""

    files: list[Path]
    series_uid: str
    slice_spacing: float
    positions: np.ndarray  # slice positions along the normal (mm), in InstanceNumber order
    warnings: list[str] = field(default_factory=list)

    @property
    def has_gaps(self) -> bool:
        return len(self.positions) != round(abs(self.positions[-1] - self.positions[0]) / self.slice_spacing) + 1


def _read_header(path: Path) -> SliceHeader:
    """Header of one slice; checks it is a CT image whose pixel data is complete."""
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pixel_offset = fh.tell()
    except (InvalidDicomError, EOFError, OSError, ValueError) as err:
        raise CTInputError(f"{path}: not a readable DICOM file ({err})") from err
    modality = ds.get("Modality", None)
    if modality != "CT":
        raise CTInputError(f"{path}: modality is {modality!r}, not CT")
    sop_class = ds.get("SOPClassUID", None)
    if sop_class is not None and sop_class not in (CTImageStorage, "1.2.840.10008.5.1.4.1.1.2.1"):
        raise CTInputError(f"{path}: SOP class {sop_class} is not CT Image Storage")
    for tag in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                "Rows", "Columns", "BitsAllocated"):
        if tag not in ds:
            raise CTInputError(f"{path}: missing DICOM attribute {tag}")
    remaining = os.path.getsize(path) - pixel_offset
    if remaining < 8:
        raise CTInputError(f"{path}: DICOM file has no pixel data")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        if remaining < ELEMENT_HEADER_BYTES + expected:
            raise CTInputError(f"{path}: pixel data is truncated ({max(remaining - ELEMENT_HEADER_BYTES, 0)} "
                               f"of {expected} bytes)")
    return SliceHeader(path, str(ds.SeriesInstanceUID), np.asarray(ds.ImagePositionPatient, dtype=np.float64),
                       np.asarray(ds.ImageOrientationPatient, dtype=np.float64), int(ds.get("InstanceNumber", 0)),
                       (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                       "RescaleSlope" in ds and "RescaleIntercept" in ds)


def check_series(files: list[Path], multiple_series: Literal["error", "largest"],
                 on_missing_slice: Literal["error", "warn"], spacing_tolerance: float,
                 on_missing_rescale: Literal["error", "identity"] = "error") -> SeriesCheck:
    """Validate the slices of one series folder and return them sorted along the normal."""
    if not files:
        raise CTInputError("empty DICOM series: no files given")
    folder = files[0].parent
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for path in files:
        header = _read_header(path)
        groups[header.series_uid].append(header)
    warnings: list[str] = []
    if len(groups) > 1:
        sizes = ", ".join(f"{uid} ({len(g)} slices)" for uid, g in sorted(groups.items()))
        if multiple_series == "error":
            raise CTInputError(f"{folder}: folder holds {len(groups)} DICOM series: {sizes}; "
                               "put each series in its own folder or set multiple_series: largest")
        warnings.append(f"{len(groups)} series in folder, used the largest: {sizes}")
    uid, slices = max(groups.items(), key=lambda item: (len(item[1]), item[0]))
    if len(slices) < 2:
        raise CTInputError(f"{folder}: series {uid} has a single slice, not a volume")
    orientation = slices[0].orientation
    for s in slices:
        if not np.allclose(s.orientation, orientation, atol=1e-4):
            raise CTInputError(f"{s.path}: ImageOrientationPatient differs from the rest of series {uid}")
        if not np.allclose(s.pixel_spacing, slices[0].pixel_spacing, rtol=1e-4):
            raise CTInputError(f"{s.path}: PixelSpacing {list(s.pixel_spacing)} differs from "
                               f"{list(slices[0].pixel_spacing)} of {slices[0].path.name} in series {uid} "
                               "(the slices would be stacked at one spacing)")
    unscaled = [s.path for s in slices if not s.rescaled]
    if unscaled:
        if on_missing_rescale == "error":
            raise CTInputError(f"{unscaled[0]}: no RescaleSlope/RescaleIntercept ({len(unscaled)} of {len(slices)} "
                               f"slices of series {uid}), so its stored values are not known to be HU; set "
                               "preprocess.ct.on_missing_rescale: identity to take them as HU")
        warnings.append(f"{len(unscaled)} of {len(slices)} slices without RescaleSlope/RescaleIntercept: "
                        "stored values taken as HU (on_missing_rescale: identity)")
    normal = np.cross(orientation[:3], orientation[3:])
    distance = np.array([s.position @ normal for s in slices])
    order = np.argsort(distance, kind="stable")
    slices = [slices[i] for i in order]
    gaps = np.diff(distance[order])
    if np.any(gaps < 1e-3):
        dup = slices[int(np.argmin(gaps)) + 1].path
        raise CTInputError(f"{dup}: two slices at the same position in series {uid}")
    spacing = float(np.median(gaps))
    ratio = gaps / spacing
    uneven = np.abs(ratio - 1.0) > spacing_tolerance
    if uneven.any():
        whole = np.abs(ratio - np.rint(ratio)) <= spacing_tolerance * np.rint(ratio)
        if np.all(whole[uneven]) and np.all(np.rint(ratio[uneven]) >= 2):
            where = [f"after {slices[i].path.name} ({int(np.rint(ratio[i])) - 1} missing)" for i in np.flatnonzero(uneven)]
            message = f"{folder}: missing slice(s) in series {uid}: {'; '.join(where)}"
            if on_missing_slice == "error":
                raise CTInputError(message)
            warnings.append(message.split(": ", 1)[1])
        else:
            i = int(np.flatnonzero(uneven)[0])
            raise CTInputError(f"{slices[i + 1].path}: non-uniform slice spacing in series {uid} "
                               f"(gap {gaps[i]:.3f} mm, median {spacing:.3f} mm)")
    instances = [s.instance for s in slices]
    if len(set(instances)) != len(instances) or instances not in (sorted(instances), sorted(instances, reverse=True)):
        raise CTInputError(f"{folder}: InstanceNumber does not follow the slice positions in series {uid}")
    by_instance = distance[order] if instances == sorted(instances) else distance[order][::-1]
    return SeriesCheck([s.path for s in slices], uid, spacing, by_instance, warnings)
