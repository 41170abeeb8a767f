"""Snakemake entry point of the reg2rg_token_cache shard rules: each study's frozen-encoder tokens."""

from pathlib import Path

import torch

from strata.config import from_dict
from strata.logging_setup import snakemake_logging
from strata.models.reg2rg.mask_encoder import build_encoders
from strata.models.reg2rg.weights import read_checkpoint
from strata.reg2rg.config import EncoderConfig
from strata.reg2rg.token_cache import module_sha256, run_token_cache
from strata.reg2rg.weight_paths import encoder_weights, require_weights

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(EncoderConfig, dict(snakemake.params.encoder), where="reg2rg.encoder")
    torch.set_num_threads(snakemake.threads)
    checkpoint = snakemake.params.checkpoint
    require_weights(encoder_weights(cfg, Path(checkpoint) if checkpoint else None))
    encoders = build_encoders(cfg, int(snakemake.params.seed), read_checkpoint(Path(checkpoint)) if checkpoint else None)
    if torch.cuda.is_available():
        encoders = encoders.cuda()
    sha = module_sha256(encoders)
    log.info("encoders %s, %d studies", sha, len(snakemake.output))
    for i, (ct, out) in enumerate(zip(snakemake.input.ct, snakemake.output), 1):
        run_token_cache(encoders, sha, Path(ct), Path(out), getattr(torch, cfg.cache_dtype))
        log.info("study %d/%d %s", i, len(snakemake.output), Path(out).stem)
