"""Snakemake entry point of rule evaluate: one checkpoint's outputs -> metrics.parquet."""

from pathlib import Path

from strata.config import from_dict
from strata.evaluation.config import ProbeConfig
from strata.evaluation.evaluate import EvaluateJob, evaluate
from strata.evaluation.reg2rg import demo_findings
from strata.io.atomic import write_parquet
from strata.logging_setup import snakemake_logging

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

with snakemake_logging(snakemake.log[0]) as log:
    findings = snakemake.params.ct_findings
    job = EvaluateJob(
        family=snakemake.wildcards.family,
        run=snakemake.wildcards.run,
        step=int(snakemake.wildcards.step),
        data=snakemake.params.data,
        generated=Path(snakemake.input.generated),
        cache_dir=Path(snakemake.input.manifest).parent.parent,
        probe=from_dict(ProbeConfig, dict(snakemake.params.probe), where="evaluation.probe"),
        ct_findings={k: dict(v) for k, v in findings.items()} if findings else None,
        demo_findings=demo_findings(snakemake.params.demo_findings),
        pose_labels=Path(labels) if (labels := getattr(snakemake.input, "labels", None)) else None,
        pose_source=str(snakemake.config["data"]["pose"]["path"]),
        init_generated=Path(init) if (init := getattr(snakemake.input, "init", None)) else None,
        velocity_gain=float(snakemake.params.velocity_gain),
    )
    metrics = evaluate(job)
    log.info("%d metrics for %s/%s step %d", len(metrics), job.family, job.run, job.step)
    write_parquet(metrics, snakemake.output[0])
