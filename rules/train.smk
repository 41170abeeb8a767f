# Training: one job per (family, run); checkpoints at the steps the config fixes.
# A re-run after a kill resumes from results/<family>/<run>/resume/ (not an output).


rule train_hiera3d:
    input:
        unpack(training_inputs("hiera3d")),
    output:
        checkpoints=directory("results/hiera3d/{run}/checkpoints"),
        log="results/hiera3d/{run}/train_log.parquet",
    log:
        "results/logs/train_hiera3d/{run}.log",
    benchmark:
        "results/benchmarks/train_hiera3d/{run}.tsv"
    wildcard_constraints:
        run=run_pattern("hiera3d"),
    conda:
        "../envs/torch.yaml"
    threads: 2
    params:
        family="hiera3d",
        run_config=run_config("hiera3d"),
        seed=config["seed"],
        cache="results/cache",
    script:
        "../workflow_scripts/train.py"
