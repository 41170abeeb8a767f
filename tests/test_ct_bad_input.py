"""Bad CT input: each case fails with an error naming the file and the problem, and
leaves no cache file, manifest row or temporary file behind."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import SMALL_SPACING, SmallStudy, small_ct_config

from strata.ct.cache_format import read_study
from strata.ct.demo import lps_affine, write_dicom_series, write_nifti
from strata.ct.errors import CTInputError
from strata.ct.layout import dicom_slice_name
from strata.ct.load import load_volume
from strata.ct.preprocess import run_preprocess_ct
from strata.ct.reports import read_reports


def run(study: SmallStudy, **cfg_changes: object) -> None:
    run_preprocess_ct("s1", study.kind, study.files, study.masks, small_ct_config(**cfg_changes),
                      study.cache_file, study.row_file)


def assert_fails_cleanly(study: SmallStudy, match: str, **cfg_changes: object) -> CTInputError:
    with pytest.raises(CTInputError, match=match) as info:
        run(study, **cfg_changes)
    assert study.outputs_left() == []
    return info.value


def edit_slice(path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def test_truncated_dicom_file(dicom_study):
    bad = dicom_study.files[5]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 300])
    err = assert_fails_cleanly(dicom_study, "truncated")
    assert str(bad) in str(err)


def test_dicom_without_pixel_data(dicom_study):
    bad = dicom_study.files[3]
    edit_slice(bad, PixelData=None)
    err = assert_fails_cleanly(dicom_study, "no pixel data")
    assert str(bad) in str(err)


def test_not_a_dicom_file(dicom_study):
    bad = dicom_study.files[2]
    bad.write_bytes(b"this is not DICOM at all")
    err = assert_fails_cleanly(dicom_study, "not a readable DICOM")
    assert str(bad) in str(err)


def test_non_ct_modality(dicom_study):
    bad = dicom_study.files[0]
    edit_slice(bad, Modality="MR")
    err = assert_fails_cleanly(dicom_study, "modality is 'MR', not CT")
    assert str(bad) in str(err)


def test_missing_slice_is_an_error_or_a_recorded_warning(dicom_study):
    gone = dicom_study.files.pop(6)
    gone.unlink()
    err = assert_fails_cleanly(dicom_study, "missing slice")
    assert str(gone.parent) in str(err)
    run(dicom_study, on_missing_slice="warn")
    row = pd.read_parquet(dicom_study.row_file)
    assert len(row.loc[0, "warnings"]) == 1 and "missing slice" in row.loc[0, "warnings"][0]


def test_missing_slice_is_filled_on_the_uniform_grid(dicom_study):
    """With warn, the gap is filled by linear interpolation and every other slice stays put."""
    n_z = dicom_study.hu.shape[2]
    dicom_study.files.pop(6).unlink()
    index = n_z - 1 - 6  # slice_0000 is instance 1, the most superior slice
    volume = load_volume("dicom", dicom_study.files, small_ct_config(on_missing_slice="warn"))
    got = volume.image[0].numpy()
    assert got.shape == dicom_study.hu.shape
    kept = [k for k in range(dicom_study.hu.shape[2]) if k != index]
    np.testing.assert_array_equal(got[..., kept], dicom_study.hu[..., kept])
    np.testing.assert_allclose(got[..., index], (dicom_study.hu[..., index - 1] + dicom_study.hu[..., index + 1]) / 2,
                               atol=1e-3)


def test_non_uniform_slice_spacing(dicom_study):
    bad = dicom_study.files[4]
    ds = pydicom.dcmread(bad)
    position = list(ds.ImagePositionPatient)
    position[2] = float(position[2]) + 0.3 * SMALL_SPACING[2]
    edit_slice(bad, ImagePositionPatient=position)
    assert_fails_cleanly(dicom_study, "non-uniform slice spacing")


def test_two_series_in_one_folder_are_never_mixed(dicom_study, tmp_path):
    folder = dicom_study.files[0].parent
    other = np.full((24, 24, 5), 500.0, dtype=np.float32)
    write_dicom_series(other, SMALL_SPACING, folder, "other", 99, lambda i: f"other_{i:04d}.dcm")
    with_other = sorted(folder.iterdir())
    clean = SmallStudy(**{**dicom_study.__dict__, "cache_file": tmp_path / "clean" / "studies" / "a.safetensors",
                          "row_file": tmp_path / "clean" / "rows" / "a.parquet"})
    mixed = SmallStudy(**{**dicom_study.__dict__, "files": with_other})
    err = assert_fails_cleanly(mixed, "holds 2 DICOM series")
    assert str(folder) in str(err)
    run(mixed, multiple_series="largest")
    run(clean)
    mixed_tensors, clean_tensors = read_study(mixed.cache_file), read_study(clean.cache_file)
    for key in clean_tensors:
        assert torch.equal(mixed_tensors[key], clean_tensors[key]), key
    assert "2 series in folder" in pd.read_parquet(mixed.row_file).loc[0, "warnings"][0]


def test_nifti_with_nan(nifti_study):
    path = nifti_study.files[0]
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    path.write_bytes(gzip.compress(nib.Nifti1Image(data, nib.load(path).affine).to_bytes()))
    err = assert_fails_cleanly(nifti_study, "NaN")
    assert str(path) in str(err)


def test_mask_of_the_wrong_shape(nifti_study):
    bad = nifti_study.masks["heart"]
    write_nifti(np.zeros((24, 24, 11), dtype=np.uint8), lps_affine((24, 24, 11), SMALL_SPACING), bad, np.uint8)
    err = assert_fails_cleanly(nifti_study, "mask shape")
    assert str(bad) in str(err)


def test_mask_with_another_affine(nifti_study):
    bad = nifti_study.masks["lung"]
    affine = lps_affine((24, 24, 12), SMALL_SPACING)
    affine[:3, 3] += 5.0
    write_nifti(np.ones((24, 24, 12), dtype=np.uint8), affine, bad, np.uint8)
    err = assert_fails_cleanly(nifti_study, "affine does not match")
    assert str(bad) in str(err)


def test_report_naming_an_unknown_region(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text("Volumename,Anatomy,Sentence\ns1.nii.gz,,Whole report.\ns1.nii.gz,lung,Clear.\n"
                    "s1.nii.gz,liver,Normal liver.\n")
    with pytest.raises(CTInputError, match=r"line 4 names unknown region 'liver'") as info:
        read_reports(path, ["s1"])
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("content", "problem"), [
    ("", "the report table is empty"),
    ("Volumename,Anatomy,Sentence\n", "the report table has a header but no rows"),
    ("Volumename,Anatomy,Sentence\nother.nii.gz,,Whole report.\n",
     r"no row names a study of the dataset \(its Volumename values, e\.g\. other\.nii\.gz, match none of the 1 studies"),
])
def test_report_table_without_a_usable_row(tmp_path, content, problem):
    path = tmp_path / "reports.csv"
    path.write_text(content)
    with pytest.raises(CTInputError, match=f"{re.escape(str(path))}: {problem}"):
        read_reports(path, ["s1"])


def test_single_slice_series_is_not_a_volume(tmp_path):
    files = write_dicom_series(np.zeros((8, 8, 1), dtype=np.float32), SMALL_SPACING, tmp_path / "one", "one", 0,
                               dicom_slice_name)
    study = SmallStudy("dicom", files, {}, np.zeros(1), tmp_path / "out" / "studies" / "x.safetensors",
                       tmp_path / "out" / "rows" / "x.parquet")
    assert_fails_cleanly(study, "single slice")


def test_dicom_without_rescale_is_an_error_or_identity_with_a_recorded_warning(dicom_study):
    for path in dicom_study.files:
        edit_slice(path, RescaleSlope=None, RescaleIntercept=None)
    err = assert_fails_cleanly(dicom_study, r"no RescaleSlope/RescaleIntercept \(12 of 12 slices")
    assert str(dicom_study.files[0].parent) in str(err) and "on_missing_rescale: identity" in str(err)
    run(dicom_study, on_missing_rescale="identity")
    warnings = pd.read_parquet(dicom_study.row_file).loc[0, "warnings"]
    assert any("12 of 12 slices without RescaleSlope/RescaleIntercept" in w for w in warnings)


def test_dicom_slices_with_different_pixel_spacing_are_refused(dicom_study):
    bad = dicom_study.files[7]
    edit_slice(bad, PixelSpacing=[SMALL_SPACING[0] * 2, SMALL_SPACING[1] * 2])
    err = assert_fails_cleanly(dicom_study, r"PixelSpacing \[26\.0, 26\.0\] differs from \[13\.0, 13\.0\]")
    assert str(bad) in str(err)


@pytest.mark.parametrize(("spacing", "problem"), [
    ((400.0, 13.0, 24.0), r"voxel size \[400\.0, 13\.0, 24\.0\] mm exceeds max_voxel_mm 30"),
    ((13.0, 13.0, 0.0), r"the voxel-to-world affine is singular"),
])
def test_implausible_nifti_geometry_is_refused_before_resampling(nifti_study, spacing, problem):
    path = nifti_study.files[0]
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    raw = bytearray(nib.Nifti1Image(data, lps_affine(data.shape, SMALL_SPACING)).to_bytes())
    # nibabel refuses to write a singular affine: patch the NIfTI-1 header fields instead
    raw[252:256] = np.array([0, 1], dtype="<i2").tobytes()  # qform_code 0, sform_code 1: the sform rules
    raw[80:92] = np.asarray(spacing, dtype="<f4").tobytes()  # pixdim[1:4] (MONAI trusts them over the sform)
    raw[280:328] = lps_affine(data.shape, spacing)[:3].astype("<f4").tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(gzip.compress(bytes(raw)))
    err = assert_fails_cleanly(nifti_study, problem)
    assert str(path) in str(err)


def test_field_of_view_limit(nifti_study):
    err = assert_fails_cleanly(nifti_study, r"field of view \[312\.0, 312\.0, 288\.0\] mm exceeds max_extent_mm 300",
                               max_extent_mm=300.0)
    assert str(nifti_study.files[0]) in str(err)


@pytest.mark.parametrize(("values", "problem"), [
    (lambda m: m.astype(np.float32) * 0.4, r"mask values must be 0 and one integer label, found non-zero values 0\.4"),
    (lambda m: m.astype(np.uint8) * (1 + np.arange(m.shape[0])[:, None, None] % 3).astype(np.uint8),
     r"found non-zero values 1, 2, 3 \(a probability map or a multi-label mask\?\)"),
    (lambda m: np.where(m, np.nan, 0).astype(np.float32), r"mask holds \d+ NaN/inf values"),
    (lambda m: np.stack([m, m], axis=-1).astype(np.uint8), r"expected one 3-D mask, got 2 volumes of shape \(24, 24, 12\)"),
])
def test_a_mask_that_is_not_one_binary_volume_is_refused(nifti_study, values, problem):
    bad = nifti_study.masks["heart"]
    mask = np.asarray(nib.load(bad).dataobj) > 0
    array = values(mask)
    write_nifti(array, lps_affine((24, 24, 12), SMALL_SPACING), bad, array.dtype.type)
    err = assert_fails_cleanly(nifti_study, problem)
    assert str(bad) in str(err)


def test_an_empty_region_mask_is_recorded(nifti_study):
    empty = nifti_study.masks["heart"]
    write_nifti(np.zeros((24, 24, 12), dtype=np.uint8), lps_affine((24, 24, 12), SMALL_SPACING), empty, np.uint8)
    run(nifti_study)
    row = pd.read_parquet(nifti_study.row_file).loc[0]
    assert "heart" in list(row["regions_present"])
    assert f"region heart: mask {empty.name} is empty" in list(row["warnings"])
