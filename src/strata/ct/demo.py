"""Synthetic chest CT in the real on-disk formats (RadGenome-ChestCT NIfTI and DICOM series).

Each study is a numerical phantom (body, lungs, heart, spine and ribs, trachea,
esophagus, mediastinum, thyroid, breasts, upper abdomen) with the findings its report
states: a nodule in one lung whose size is in the lung sentence, an enlarged heart, a
pleural effusion. Masks are written per region as RadGenome does; DICOM series are written
slice by slice with pydicom (CT Image Storage, int16 with rescale slope/intercept) in
descending table position, so readers must sort by geometry.

Geometry convention: the phantom is built in RAS index order ``P[x, y, z]``; files store
``L = P[::-1, ::-1, :]`` (LPS in-plane order, as scanners and CT-RATE do) with the matching
affine, so orientation to RAS is a real flip for every reader.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from strata.config import CTDataConfig, DemoCTConfig
from strata.ct.demo_plan import DemoFindings, DemoStudyPlan, demo_plan, region_sentences
from strata.ct.layout import demo_studies
from strata.ct.regions import REGIONS
from strata.io.atomic import atomic_path

AIR_HU = -1000.0
NODULE_HU = 150.0  # a dense solid nodule: bright enough to survive the random patch projection
NODULE_SPREAD_MM = 4.0  # largest offset of the nodule from mid-lung, per axis
RESCALE_INTERCEPT = -1024.0


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """World coordinates (mm, RAS, centred on the volume) as broadcastable axes."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.ix_(*axes)


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + \
        ((z - centre[2]) / radii[2]) ** 2 <= 1.0


def _cylinder_z(x, y, z, centre_xy, radius, z_range) -> np.ndarray:
    inside = (x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2 <= radius ** 2
    return inside & (z >= z_range[0]) & (z <= z_range[1])


def nodule_centre(side: str, jitter: np.ndarray, scale: tuple[float, float, float], spread_mm: float,
                  rng: np.random.Generator) -> tuple[float, float, float]:
    """Centre (mm) of the nodule in the middle of its lung, moved with the lung's jitter and by
    a uniform offset of at most ``spread_mm`` per axis (scaled with the field of view)."""
    kx, ky, kz = scale
    offset = rng.uniform(-spread_mm, spread_mm, size=3)
    cx = (1.0 if side == "right" else -1.0) * 65 * kx + jitter[0]
    return cx + offset[0] * kx, -5 * ky + offset[1] * ky, 25 * kz + jitter[2] + offset[2] * kz


def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], findings: DemoFindings,
            regions: tuple[str, ...], noise_hu: float, rng: np.random.Generator,
            nodule_spread_mm: float = NODULE_SPREAD_MM) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A chest phantom: HU volume ``[X, Y, Z]`` (RAS index order) and one bool mask per region.

    Sizes are in mm relative to a 320 x 320 x 288 mm field of view and scale with it. The
    nodule (dense, near mid-lung: :func:`nodule_centre`) is placed so that the frozen random
    ViT-3D's patch projection still carries it (bench/RESULTS.md, "Reg2RG on the demo").
    """
    x, y, z = _grid(shape, spacing)
    fx, fy, fz = (n * s / 2.0 for n, s in zip(shape, spacing))  # half field of view
    kx, ky, kz = fx / 160.0, fy / 160.0, fz / 144.0
    jitter = rng.normal(0.0, 4.0, size=3)

    body = ((x / (150 * kx)) ** 2 + (y / (110 * ky)) ** 2 <= 1.0) & (z == z)  # noqa: PLR0124 (broadcasts the 2-D body outline along z)
    heart_r = (62, 52, 55) if findings.cardiomegaly else (45, 40, 45)
    heart = _ellipsoid(x, y, z, (-15 * kx, 25 * ky, -20 * kz), (heart_r[0] * kx, heart_r[1] * ky, heart_r[2] * kz))
    lungs = {side: _ellipsoid(x, y, z, (sign * 65 * kx + jitter[0], -10 * ky, 10 * kz + jitter[2]),
                              (45 * kx, 70 * ky, 110 * kz)) & ~heart
             for side, sign in (("right", 1.0), ("left", -1.0))}
    lung = lungs["right"] | lungs["left"]
    pleura = _dilate(lung, 2) & ~lung & body
    spine = _cylinder_z(x, y, z, (0, -85 * ky), 18 * kx, (-np.inf, np.inf))
    ring = ((x / (140 * kx)) ** 2 + (y / (100 * ky)) ** 2)
    ribs = (ring >= 0.86) & (ring <= 1.0) & (np.sin(z / (9 * kz)) > 0.3) & (z > -90 * kz) & (z < 120 * kz)
    bone = spine | ribs
    trachea = _cylinder_z(x, y, z, (0, 10 * ky), 11 * kx, (20 * kz, np.inf))
    esophagus = _cylinder_z(x, y, z, (-5 * kx, -18 * ky), 8 * kx, (-60 * kz, np.inf))
    mediastinum = ((np.abs(x) < 25 * kx) & (y > -30 * ky) & (y < 50 * ky) & (z > 0) & (z < 110 * kz)
                   & ~lung & ~heart & ~trachea & ~esophagus & ~bone)
    thyroid = (_ellipsoid(x, y, z, (15 * kx, 30 * ky, 125 * kz), (11 * kx, 9 * ky, 16 * kz))
               | _ellipsoid(x, y, z, (-15 * kx, 30 * ky, 125 * kz), (11 * kx, 9 * ky, 16 * kz)))
    breast = (_ellipsoid(x, y, z, (70 * kx, 100 * ky, 20 * kz), (45 * kx, 35 * ky, 45 * kz))
              | _ellipsoid(x, y, z, (-70 * kx, 100 * ky, 20 * kz), (45 * kx, 35 * ky, 45 * kz))) & (y > 90 * ky)
    abdomen = body & (z < -70 * kz) & ~lung & ~bone & ~heart

    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[body] = 40.0
    hu[abdomen] = 60.0
    hu[mediastinum] = -60.0
    hu[lung] = -850.0
    if findings.effusion != "none":  # fluid in the pleural space displaces the lung base
        fluid = lungs[findings.effusion] & (y < -35 * ky) & (z < -20 * kz)
        hu[fluid] = 15.0
        pleura = pleura | fluid
        lung = lung & ~fluid
    if findings.nodule_mm:
        centre = nodule_centre(findings.nodule_side, jitter, (kx, ky, kz), nodule_spread_mm, rng)
        r = findings.nodule_mm / 2.0
        hu[_ellipsoid(x, y, z, centre, (r, r, r)) & lungs[findings.nodule_side]] = NODULE_HU
    hu[heart] = 45.0
    hu[esophagus] = 30.0
    hu[trachea] = 30.0
    hu[_cylinder_z(x, y, z, (0, 10 * ky), 8 * kx, (20 * kz, np.inf))] = AIR_HU
    hu[bone] = 700.0
    if "thyroid" in regions:
        hu[thyroid] = 80.0
    if "breast" in regions:
        hu[breast] = 20.0
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)

    masks = {"abdomen": abdomen, "bone": bone, "breast": breast, "esophagus": esophagus, "heart": heart,
             "lung": lung, "mediastinum": mediastinum, "pleura": pleura, "thyroid": thyroid,
             "trachea and bronchie": trachea}
    masks = {r: np.broadcast_to(masks[r], shape).copy() for r in REGIONS if r in regions}
    return np.clip(hu, -1024, 3071), masks


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=iterations)


def lps_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """NIfTI (RAS world) affine of the LPS-ordered array ``P[::-1, ::-1, :]``."""
    x0, y0, z0 = (-(n - 1) / 2.0 * s for n, s in zip(shape, spacing))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-x0, -y0, z0)
    return affine


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    """Write ``array`` (RAS index order) in LPS order with its affine, atomically."""
    image = nib.Nifti1Image(np.ascontiguousarray(array[::-1, ::-1, :]).astype(dtype), affine)
    image.header.set_xyzt_units("mm")
    # gzip with mtime=0 so that two runs give byte-identical files
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def write_dicom_series(hu: np.ndarray, spacing: tuple[float, float, float], folder: Path,
                       study_id: str, seed: int, slice_name) -> list[Path]:
    """Write ``hu`` (RAS index order) as an axial CT series, one file per slice.

    Instance 1 is the most superior slice (head-first order), so the stack order differs
    from the file's z order and readers must sort by geometry.
    """
    n_x, n_y, n_z = hu.shape
    x0, y0, z0 = (-(n - 1) / 2.0 * s for n, s in zip(hu.shape, spacing))
    lps = hu[::-1, ::-1, :]  # [x_lps, y_lps, z]
    stored = np.round(lps - RESCALE_INTERCEPT).astype(np.int16)
    uid = lambda *parts: generate_uid(entropy_srcs=[str(seed), study_id, *map(str, parts)])
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    paths = []
    for instance, k in enumerate(range(n_z - 1, -1, -1), start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid("slice", k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.AccessionNumber = study_id, "Demo^Phantom", study_id
        ds.StudyDate = ds.SeriesDate = "20240101"
        ds.Modality, ds.Manufacturer, ds.SeriesNumber = "CT", "strata demo", 1
        ds.InstanceNumber = instance
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(x0), float(y0), float(z0 + k * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # [row spacing (y), column spacing (x)]
        ds.SliceThickness = float(spacing[2])
        ds.SliceLocation = float(z0 + k * spacing[2])
        ds.Rows, ds.Columns = n_y, n_x
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1.0, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = y, columns = x
        path = folder / slice_name(instance - 1)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def write_reports(plans: list[DemoStudyPlan], path: Path) -> None:
    """Region report CSV ``Volumename, Anatomy, Sentence``; an empty Anatomy is the whole report."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Volumename", "Anatomy", "Sentence"])
        for plan in plans:
            volume = f"{plan.study_id}.nii.gz" if plan.kind == "nifti" else plan.study_id
            sentences = region_sentences(plan.findings, plan.regions)
            writer.writerow([volume, "", " ".join(sentences.values())])
            for region, sentence in sentences.items():
                writer.writerow([volume, region, sentence])


def write_demo_ct(data: CTDataConfig, demo: DemoCTConfig, seed: int) -> None:
    """Write every demo study (volumes, masks) and the report CSV."""
    from strata.ct.layout import dicom_slice_name

    plans = demo_plan(data, demo, seed)
    studies = {s.study_id: s for s in demo_studies(data, demo, seed)}
    for index, plan in enumerate(tqdm(plans, desc="demo CT studies")):
        rng = np.random.default_rng([seed, 11, index])
        hu, masks = phantom(demo.shape, demo.spacing, plan.findings, plan.regions, demo.noise_hu, rng)
        study = studies[plan.study_id]
        affine = lps_affine(demo.shape, demo.spacing)
        if plan.kind == "nifti":
            write_nifti(np.round(hu), affine, study.files[0], np.int16)
        else:
            write_dicom_series(hu, demo.spacing, study.source, plan.study_id, seed, dicom_slice_name)
        for region, mask_path in study.masks:
            write_nifti(masks[region], affine, mask_path, np.uint8)
    write_reports(plans, data.reports)
