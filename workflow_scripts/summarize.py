"""Snakemake entry point of rule summarize: all checkpoints' metrics -> one table + best steps."""

import pandas as pd

from strata.config import from_dict
from strata.evaluation.config import BestCheckpoint
from strata.evaluation.margins import margin_table
from strata.evaluation.summary import best_checkpoints, markdown, wide_table, with_margins
from strata.io.atomic import atomic_path, write_parquet
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    rules = {family: from_dict(BestCheckpoint, dict(v), where=f"evaluation.best_checkpoint.{family}")
             for family, v in snakemake.params.best_checkpoint.items()}
    long = pd.concat([pd.read_parquet(p) for p in snakemake.input.metrics], ignore_index=True)
    wide, margins = wide_table(long), margin_table(long)
    best = best_checkpoints(wide, rules)
    write_parquet(wide, snakemake.output.parquet)
    for frame, path in ((wide, snakemake.output.csv), (with_margins(best, margins), snakemake.output.best),
                        (margins, snakemake.output.baselines)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.markdown) as tmp:
        tmp.write_text(markdown(wide, best, margins))
    log.info("%d checkpoints summarised; best:\n%s", len(wide), best.to_string(index=False))
