"""Snakemake entry point of rule verdict: every run's learning targets -> PASS / FAIL."""

import pandas as pd

from strata.evaluation.verdict import verdict, verdict_markdown
from strata.io.atomic import atomic_path
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    long = pd.concat([pd.read_parquet(p) for p in snakemake.input.metrics], ignore_index=True)
    best = pd.read_csv(snakemake.input.best)
    table = verdict(long, {(r.family, r.run): int(r.step) for r in best.itertuples(index=False)})
    with atomic_path(snakemake.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    text = verdict_markdown(table)
    with atomic_path(snakemake.output.markdown) as tmp:
        tmp.write_text(text)
    log.info("%s", text)
