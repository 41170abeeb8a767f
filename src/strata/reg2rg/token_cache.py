"""The frozen encoders' outputs, computed once per study (rule ``reg2rg_token_cache``).

The ViT-3D and the mask encoder are frozen, so the original's 11 ViT passes per sample
per step (global volume + 10 region crops, plus the mask encoder) always give the same
result. They are computed here once per study from the cached CT tensors
(:mod:`strata.ct.preprocess`) and written atomically to
``results/reg2rg/tokens/<study>.safetensors``:

=================  ===========================  =====================================
tensor             shape                        meaning
=================  ===========================  =====================================
image_tokens       [N, vit.dim]                 ViT tokens of the whole volume
region_tokens      [10, n, vit.dim]             ViT tokens of each region crop (REGIONS order)
mask_features      [10, mask.dim]               mean-pooled mask-encoder tokens per region
region_present     uint8 [10]                   1 where the study has the region
=================  ===========================  =====================================

Absent regions are zeros. The metadata holds the cache key: the sha256 of the encoder
weights, of the CT preprocessing parameters and of the CT cache file it was computed from;
training refuses a cache whose encoder hash differs from the configured encoders'.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from strata.ct.cache_format import read_study
from strata.ct.regions import REGIONS
from strata.io.atomic import sha256_files
from strata.io.tensor_files import read_tensor_metadata, save_tensors


def module_sha256(module: torch.nn.Module) -> str:
    """Content hash of a module's weights (names, dtypes, shapes and bytes, sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@torch.no_grad()
def encode_study(encoders: torch.nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Token-cache tensors of one study's cached CT tensors."""
    image = tensors["image"].float()[None]
    present = tensors["region_present"].bool()
    region_tokens = encoders.encode_volumes(tensors["region_images"].float())  # (10, n, dim)
    mask_features = encoders.encode_masks(tensors["region_masks"].float()[:, None])  # (10, mask_dim)
    region_tokens[~present] = 0
    mask_features[~present] = 0
    return {
        "image_tokens": encoders.encode_volumes(image)[0].to(dtype),
        "region_tokens": region_tokens.to(dtype),
        "mask_features": mask_features.to(dtype),
        "region_present": present.to(torch.uint8),
    }


def run_token_cache(encoders: torch.nn.Module, encoder_sha256: str, ct_file: Path, out_file: Path,
                    dtype: torch.dtype) -> None:
    """Encode one study and write its token file atomically."""
    meta = read_tensor_metadata(ct_file)
    tokens = encode_study(encoders, read_study(ct_file), dtype)
    if tokens["region_tokens"].shape[0] != len(REGIONS):
        raise ValueError(f"{ct_file}: expected {len(REGIONS)} regions")
    save_tensors(tokens, out_file, metadata={
        "study_id": meta.get("study_id", ct_file.stem), "encoder_sha256": encoder_sha256,
        "ct_params_sha256": meta.get("params_sha256"), "ct_file_sha256": sha256_files([ct_file])},
        written_by="reg2rg_token_cache")


def check_cache(files: list[Path], encoder_sha256: str | None) -> dict[str, str]:
    """Every token file must come from the same encoders (the configured ones, if given).

    Returns ``{study_id: ct_file_sha256}`` (recorded in checkpoint metadata).
    """
    hashes, seen = {}, set()
    for f in files:
        meta = read_tensor_metadata(f)
        seen.add(meta.get("encoder_sha256"))
        hashes[meta.get("study_id", f.stem)] = meta.get("ct_file_sha256", "")
    if len(seen) > 1 or (encoder_sha256 is not None and seen != {encoder_sha256}):
        raise ValueError(f"token cache {files[0].parent}: encoder hashes {sorted(map(str, seen))} do not match "
                         f"the configured encoders ({encoder_sha256}); re-run rule reg2rg_token_cache")
    return hashes
