# Per-checkpoint generation (docs/design.md section 2.5): one job per (family, run, checkpoint step).
# Every step is known from the config's schedule (strata.evaluation.targets). A killed job
# resumes from its part files in results/<family>/<run>/generate/.work-<step>/.
# Helpers: rules/common_outputs.smk.


rule generate:
    input:
        unpack(generate_inputs),
    output:
        "results/{family}/{run}/generate/{step}/outputs.parquet",
    log:
        "results/logs/generate/{family}/{run}/{step}.log",
    benchmark:
        "results/benchmarks/generate/{family}/{run}/{step}.tsv"
    wildcard_constraints:
        family=evaluated_families(),
        run=evaluated_runs(),
        step="[0-9]+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=generate_gpus,
    params:
        data=run_data,
        generation=generation_params,
        reg2rg=reg2rg_generation,
        pose_test_sequences=config["evaluation"]["probe"]["pose_test_sequences"],
    script:
        "../workflow_scripts/generate.py"
