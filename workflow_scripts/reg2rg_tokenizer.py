"""Snakemake entry point of rule reg2rg_tokenizer: base tokenizer + Reg2RG special tokens."""

from pathlib import Path

import pandas as pd

from strata.config import from_dict
from strata.logging_setup import snakemake_logging
from strata.reg2rg.config import TokenizerConfig
from strata.reg2rg.tokenizer import build_tokenizer
from strata.reg2rg.weight_paths import require_weights, tokenizer_weights

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    cfg = from_dict(TokenizerConfig, dict(snakemake.params.tokenizer), where="reg2rg.tokenizer")
    require_weights(tokenizer_weights(cfg))
    log.info("tokenizer %s (num_latents %d)", cfg, snakemake.params.num_latents)
    build_tokenizer(cfg, pd.read_parquet(snakemake.input.reports), int(snakemake.params.num_latents),
                    Path(snakemake.output[0]))
