"""CT preprocessing on real files written with pydicom/nibabel and read with MONAI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_ct_config, write_small_study
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage, Orientation, Spacing
from safetensors.torch import save_file

from strata.ct.cache_format import read_study
from strata.ct.load import load_volume
from strata.ct.preprocess import MANIFEST_COLUMNS, preprocess_study, region_crops, run_preprocess_ct
from strata.ct.regions import REGION_INDEX, REGIONS
from strata.ct.resample import resample_to_spacing


def test_dicom_and_nifti_routes_give_the_same_cache(tmp_path):
    """The same phantom as a DICOM series and as NIfTI gives identical cached tensors."""
    cfg = small_ct_config()
    dicom = write_small_study(tmp_path / "a", "dicom")
    nifti = write_small_study(tmp_path / "b", "nifti")
    a = preprocess_study("s1", "dicom", dicom.files, dicom.masks, cfg).tensors
    b = preprocess_study("s1", "nifti", nifti.files, nifti.masks, cfg).tensors
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_dicom_is_read_in_ras_and_equals_the_phantom(dicom_study):
    """Slices written head-first (descending z) come back as the RAS phantom, in HU."""
    volume = load_volume("dicom", dicom_study.files, small_ct_config())
    np.testing.assert_array_equal(volume.image[0].numpy(), dicom_study.hu)
    assert volume.original_spacing == (13.0, 13.0, 24.0)
    assert volume.n_slices == dicom_study.hu.shape[2]


def test_the_compact_cache_reads_back_bit_for_bit_at_a_quarter_of_the_size(nifti_study):
    """What a reader gets equals the plain tensors (the layout before compaction) exactly;
    the file is at most a quarter of the plain safetensors file."""
    cfg = small_ct_config(channels=3, dtype="float16", shape=(24, 24, 12), region_shape=(24, 24, 12))
    plain = preprocess_study("s1", "nifti", nifti_study.files, nifti_study.masks, cfg).tensors
    run_preprocess_ct("s1", "nifti", nifti_study.files, nifti_study.masks, cfg,
                      nifti_study.cache_file, nifti_study.row_file)
    loaded = read_study(nifti_study.cache_file)
    assert set(loaded) == set(plain)
    for name, tensor in plain.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    plain_file = nifti_study.cache_file.with_name("plain.safetensors")
    save_file(plain, str(plain_file))
    assert nifti_study.cache_file.stat().st_size <= plain_file.stat().st_size / 4


def test_cache_file_and_manifest_row(nifti_study):
    cfg = small_ct_config(channels=3, dtype="float16")
    run_preprocess_ct("s1", "nifti", nifti_study.files, nifti_study.masks, cfg,
                      nifti_study.cache_file, nifti_study.row_file)
    tensors = read_study(nifti_study.cache_file)
    assert tensors["image"].shape == (3, 16, 16, 8) and tensors["image"].dtype == torch.float16
    assert tensors["masks"].shape == (10, 16, 16, 8) and tensors["masks"].dtype == torch.uint8
    assert tensors["region_images"].shape == (10, 3, 8, 8, 4)
    assert tensors["region_masks"].shape == (10, 8, 8, 4)
    assert float(tensors["image"].min()) >= 0.0 and float(tensors["image"].max()) <= 1.0
    row = pd.read_parquet(nifti_study.row_file)
    assert list(row.columns) == list(MANIFEST_COLUMNS)
    assert row.loc[0, "original_shape"].tolist() == [24, 24, 12]
    assert row.loc[0, "regions_present"].tolist() == list(REGIONS)


def test_resampling_equals_monai_spacing(dicom_study):
    """Our separable resampler reproduces MONAI's Spacing (trilinear and nearest)."""
    image = load_volume("dicom", dicom_study.files, small_ct_config()).image
    for spacing in [(15.0, 15.0, 28.0), (7.0, 9.0, 11.0)]:
        ours = resample_to_spacing(image, spacing, "bilinear")
        ref = Spacing(pixdim=spacing, mode="bilinear", padding_mode="border")(image)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(ref.affine), atol=1e-9)
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-3)
    mask_path = dicom_study.masks["lung"]
    mask = Orientation("RAS", labels=None)(LoadImage(reader=NibabelReader(), ensure_channel_first=True,
                                                     dtype=np.uint8)(str(mask_path)))
    ours = resample_to_spacing(mask, (7.0, 9.0, 11.0), "nearest")
    ref = Spacing(pixdim=(7.0, 9.0, 11.0), mode="nearest", padding_mode="border")(mask.float())
    assert ours.dtype == torch.uint8
    # identical but for voxels whose source coordinate sits on a rounding tie, where
    # grid_sample's float32 coordinates and our float64 ones may round differently
    mismatch = (ours.as_tensor().float() != ref.as_tensor()).float().mean()
    assert mismatch < 2e-3


def test_region_crop_is_the_masked_foreground_box():
    """Reg2RG crop on a crafted case: the box of the region, outside-mask voxels = background."""
    cfg = small_ct_config(region_shape=(4, 3, 2))
    image = MetaTensor(torch.rand(1, 10, 10, 10) * 0.9 + 0.1, affine=torch.eye(4))
    masks = torch.zeros(10, 10, 10, 10, dtype=torch.uint8)
    lung = REGION_INDEX["lung"]
    masks[lung, 2:6, 5:8, 3:5] = 1
    masks[lung, 2, 5, 3] = 0  # a hole inside the box
    present = np.zeros(10, dtype=np.uint8)
    present[lung] = 1
    crops, crop_masks = region_crops(image, MetaTensor(masks, affine=torch.eye(4)), present, cfg, background=0.0)
    expected = image[0, 2:6, 5:8, 3:5].clone()
    expected[0, 0, 0] = 0.0
    torch.testing.assert_close(crops[lung, 0], expected)
    assert torch.equal(crop_masks[lung], masks[lung, 2:6, 5:8, 3:5])
    others = [k for k in range(10) if k != lung]
    assert crops[others].abs().sum() == 0 and crop_masks[others].sum() == 0


def test_absent_region_is_zero_with_presence_flag(tmp_path):
    study = write_small_study(tmp_path, "nifti")
    masks = {r: p for r, p in study.masks.items() if r != "thyroid"}
    tensors = preprocess_study("s1", "nifti", study.files, masks, small_ct_config()).tensors
    k = REGION_INDEX["thyroid"]
    assert tensors["region_present"][k] == 0 and tensors["region_present"].sum() == 9
    assert tensors["region_images"][k].abs().sum() == 0 and tensors["masks"][k].sum() == 0


@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_preprocessing_is_deterministic(tmp_path, kind):
    study = write_small_study(tmp_path, kind)
    cfg = small_ct_config()
    run_preprocess_ct("s1", kind, study.files, study.masks, cfg, study.cache_file, study.row_file)
    first = study.cache_file.read_bytes(), study.row_file.read_bytes()
    run_preprocess_ct("s1", kind, study.files, study.masks, cfg, study.cache_file, study.row_file)
    assert (study.cache_file.read_bytes(), study.row_file.read_bytes()) == first
