# Training: one job per (family, run); checkpoints at the steps the config fixes.
# A re-run after a kill resumes from results/<family>/<run>/resume/ (not an output).
# A run's train.gpus becomes the job's `gpu` resource; with more than one, the script
# launches torchrun with that many DDP processes (strata.training.distributed).


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
    threads: run_threads("hiera3d")
    resources:
        gpu=run_gpus("hiera3d"),
    params:
        family="hiera3d",
        run_config=run_config("hiera3d"),
        seed=config["seed"],
        cache="results/cache",
    script:
        "../workflow_scripts/train.py"


use rule train_hiera3d as train_hjepa with:
    input:
        unpack(training_inputs("hjepa")),
    output:
        checkpoints=directory("results/hjepa/{run}/checkpoints"),
        log="results/hjepa/{run}/train_log.parquet",
    log:
        "results/logs/train_hjepa/{run}.log",
    benchmark:
        "results/benchmarks/train_hjepa/{run}.tsv"
    wildcard_constraints:
        run=run_pattern("hjepa"),
    threads: run_threads("hjepa")
    resources:
        gpu=run_gpus("hjepa"),
    params:
        family="hjepa",
        run_config=run_config("hjepa"),
        seed=config["seed"],
        cache="results/cache",


use rule train_hiera3d as train_posevae with:
    input:
        unpack(training_inputs("posevae")),
    output:
        checkpoints=directory("results/posevae/{run}/checkpoints"),
        log="results/posevae/{run}/train_log.parquet",
    log:
        "results/logs/train_posevae/{run}.log",
    benchmark:
        "results/benchmarks/train_posevae/{run}.tsv"
    wildcard_constraints:
        run=run_pattern("posevae"),
    threads: run_threads("posevae")
    resources:
        gpu=run_gpus("posevae"),
    params:
        family="posevae",
        run_config=run_config("posevae"),
        seed=config["seed"],
        cache="results/cache",
