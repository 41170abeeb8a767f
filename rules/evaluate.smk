# Per-checkpoint evaluation (docs/design.md section 2.6) and the summary over all checkpoints.
# Helpers: rules/common_outputs.smk.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        "results/{family}/{run}/evaluate/{step}/metrics.parquet",
    log:
        "results/logs/evaluate/{family}/{run}/{step}.log",
    benchmark:
        "results/benchmarks/evaluate/{family}/{run}/{step}.tsv"
    wildcard_constraints:
        family=evaluated_families(),
        run=evaluated_runs(),
        step="[0-9]+",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    params:
        data=run_data,
        probe=config_subset("evaluation", "probe"),
        ct_findings=evaluate_findings,
        demo_findings=evaluate_demo_findings,
        velocity_gain=run_velocity_gain,
    script:
        "../workflow_scripts/evaluate.py"


rule summarize:
    input:
        metrics=all_metrics(),
    output:
        parquet="results/summary/metrics.parquet",
        csv=report(
            "results/summary/metrics.csv",
            caption="../report/summary_metrics.rst",
            category="Summary",
            subcategory="All checkpoints",
            labels={"table": "metrics per checkpoint"},
        ),
        markdown="results/summary/metrics.md",
        baselines=report(
            "results/summary/baselines.csv",
            caption="../report/summary_baselines.rst",
            category="Summary",
            subcategory="Baselines",
            labels={"table": "every checkpoint against its baselines"},
        ),
        best=report(
            "results/summary/best_checkpoints.csv",
            caption="../report/summary_best.rst",
            category="Summary",
            subcategory="Best checkpoints",
            labels={"table": "best checkpoint per run"},
        ),
    log:
        "results/logs/summarize.log",
    benchmark:
        "results/benchmarks/summarize.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        best_checkpoint=config_subset("evaluation", "best_checkpoint"),
    script:
        "../workflow_scripts/summarize.py"


rule verdict:
    input:
        metrics=all_metrics(),
        best="results/summary/best_checkpoints.csv",
    output:
        markdown="results/summary/verdict.md",
        csv="results/summary/verdict.csv",
    log:
        "results/logs/verdict.log",
    conda:
        "../envs/evaluate.yaml"
    script:
        "../workflow_scripts/verdict.py"
