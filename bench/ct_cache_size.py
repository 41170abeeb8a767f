"""Disk size of one cached CT study at a config's preprocessing settings: plain tensors
(the layout before compaction) against the stored file (strata.ct.cache_format).

The study is a synthetic chest phantom (strata.ct.demo) written as NIfTI at a
RadGenome-like source geometry, then preprocessed exactly as `preprocess_ct` does.

    python bench/ct_cache_size.py --config config/full.yaml [--shape 512 512 200] [--spacing 0.75 0.75 1.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from strata.config import CTPreprocessConfig, from_dict, read_yaml
from strata.ct.demo import lps_affine, phantom, write_nifti
from strata.ct.demo_plan import DemoFindings
from strata.ct.preprocess import preprocess_study, run_preprocess_ct
from strata.ct.regions import REGIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/full.yaml")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200], help="source voxels (x y z)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.75, 0.75, 1.5], help="source mm")
    args = parser.parse_args()
    cfg = from_dict(CTPreprocessConfig, read_yaml(args.config)["preprocess"]["ct"], where="preprocess.ct")
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    findings = DemoFindings(nodule_mm=20, nodule_side="left", cardiomegaly=True, effusion="right")
    hu, masks = phantom(shape, spacing, findings, REGIONS, 15.0, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        affine = lps_affine(shape, spacing)
        volume = root / "s1.nii.gz"
        write_nifti(np.round(hu), affine, volume, np.int16)
        mask_files = {}
        for region, mask in masks.items():
            mask_files[region] = root / f"{region}.nii.gz"
            write_nifti(mask, affine, mask_files[region], np.uint8)
        plain = preprocess_study("s1", "nifti", [volume], mask_files, cfg).tensors
        save_file(plain, str(root / "plain.safetensors"))
        start = time.perf_counter()
        run_preprocess_ct("s1", "nifti", [volume], mask_files, cfg, root / "stored.safetensors", root / "row.parquet")
        seconds = time.perf_counter() - start
        plain_mb = (root / "plain.safetensors").stat().st_size / 1e6
        stored_mb = (root / "stored.safetensors").stat().st_size / 1e6
    print(f"config {args.config}: cache shape {list(cfg.shape)}, regions {list(cfg.region_shape)}, "
          f"{cfg.channels} channel(s), {cfg.dtype}; source {shape} at {spacing} mm")
    for name, tensor in plain.items():
        print(f"  {name:<15} {tuple(tensor.shape)!s:<28} {tensor.numel() * tensor.element_size() / 1e6:9.1f} MB plain")
    print(f"plain {plain_mb:.1f} MB, stored {stored_mb:.1f} MB ({plain_mb / stored_mb:.1f}x smaller); "
          f"{stored_mb:.0f} GB per 1,000 studies (plain {plain_mb:.0f} GB); preprocess_ct {seconds:.1f} s")


if __name__ == "__main__":
    main()
