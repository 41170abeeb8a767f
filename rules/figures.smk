# Figures (docs/design.md section 2.7), one job per run, collected in the HTML report
# (snakemake --report report.html): rollout overlays, loss and metric curves, pose VAE samples,
# Reg2RG sample reports.
# Helpers: rules/common_outputs.smk.


rule figures:
    input:
        unpack(figure_inputs),
    output:
        rollout=report(
            "results/figures/{family}/{run}/rollout.png",
            caption="../report/rollout.rst",
            category="Attention rollout",
            subcategory="{family}",
            labels={"model": "{family}", "run": "{run}", "figure": "rollout"},
        ),
        raw="results/figures/{family}/{run}/rollout.npy",
        loss=report(
            "results/figures/{family}/{run}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{family}",
            labels={"model": "{family}", "run": "{run}", "figure": "training loss"},
        ),
        metrics=report(
            "results/figures/{family}/{run}/metrics.png",
            caption="../report/metrics.rst",
            category="Metrics per checkpoint",
            subcategory="{family}",
            labels={
                "model": "{family}",
                "run": "{run}",
                "figure": "metrics vs checkpoint",
            },
        ),
    log:
        "results/logs/figures/{family}/{run}.log",
    benchmark:
        "results/benchmarks/figures/{family}/{run}.tsv"
    wildcard_constraints:
        family=evaluated_families(),
        run=evaluated_runs(),
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    params:
        data=run_data,
        best=best_rule,
        steps=run_steps,
        pose_test_sequences=config["evaluation"]["probe"]["pose_test_sequences"],
        ct_spacing=config["preprocess"]["ct"]["spacing"],
    script:
        "../workflow_scripts/figures.py"


rule figures_posevae:
    input:
        generated=run_generated,
        metrics=run_metrics,
        manifest="results/cache/pose/manifest.parquet",
        shards="results/cache/pose/shards",
    output:
        reconstructions=report(
            "results/figures/{family}/{run}/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Pose VAE",
            subcategory="reconstructions",
            labels={"model": "{family}", "run": "{run}", "figure": "reconstructions"},
        ),
        samples=report(
            "results/figures/{family}/{run}/samples.png",
            caption="../report/samples.rst",
            category="Pose VAE",
            subcategory="prior samples and interpolation",
            labels={"model": "{family}", "run": "{run}", "figure": "samples"},
        ),
    log:
        "results/logs/figures_posevae/{family}/{run}.log",
    benchmark:
        "results/benchmarks/figures_posevae/{family}/{run}.tsv"
    wildcard_constraints:
        family="posevae",
        run=evaluated_runs(),
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    params:
        best=best_rule,
        pose_test_sequences=config["evaluation"]["probe"]["pose_test_sequences"],
    script:
        "../workflow_scripts/figures_posevae.py"


rule figures_reg2rg:
    input:
        generated=run_generated,
        metrics=run_metrics,
        manifest="results/cache/ct/manifest.parquet",
    output:
        reports=report(
            "results/figures/{family}/{run}/reports.png",
            caption="../report/reg2rg_reports.rst",
            category="Reg2RG",
            subcategory="generated reports",
            labels={"model": "{family}", "run": "{run}", "figure": "reports"},
        ),
    log:
        "results/logs/figures_reg2rg/{family}/{run}.log",
    benchmark:
        "results/benchmarks/figures_reg2rg/{family}/{run}.tsv"
    wildcard_constraints:
        family="reg2rg",
        run=evaluated_runs(),
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    params:
        best=best_rule,
    script:
        "../workflow_scripts/figures_reg2rg.py"


rule figures_probes:
    input:
        metrics=run_metrics,
    output:
        probes=report(
            "results/figures/{family}/{run}/probes.png",
            caption="../report/probes.rst",
            category="Probes against baselines",
            subcategory="{family}",
            labels={"model": "{family}", "run": "{run}", "figure": "probes per level"},
        ),
    log:
        "results/logs/figures_probes/{family}/{run}.log",
    benchmark:
        "results/benchmarks/figures_probes/{family}/{run}.tsv"
    wildcard_constraints:
        family="|".join(EMBEDDING_FAMILIES),
        run=evaluated_runs(),
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    params:
        best=best_rule,
    script:
        "../workflow_scripts/figures_probes.py"
