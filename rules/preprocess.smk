# CT studies and pose tracks -> cached tensors + parquet manifests.


# One job per shard of studies (preprocess.ct.shards; src/strata/ct/shards.py): each job pays
# the MONAI start-up once, and a new or changed study re-runs only its own shard.
for SHARD, SHARD_STUDIES in CT_SHARDS.items():

    rule:
        name:
            f"preprocess_ct_{SHARD}"
        input:
            ct_shard_inputs(SHARD_STUDIES),
        output:
            tensors=expand(CT_STUDY_TENSORS, study=SHARD_STUDIES),
            rows=expand(CT_STUDY_ROW, study=SHARD_STUDIES),
        log:
            f"results/logs/preprocess_ct/{SHARD}.log",
        benchmark:
            f"results/benchmarks/preprocess_ct/{SHARD}.tsv"
        conda:
            "../envs/data.yaml"
        threads: 1
        params:
            ct=config_subset("preprocess", "ct"),
            studies=ct_shard_plan(SHARD_STUDIES),
        script:
            "../workflow_scripts/preprocess_ct.py"


rule ct_manifest:
    input:
        rows=expand(CT_STUDY_ROW, study=STUDY_IDS),
    output:
        "results/cache/ct/manifest.parquet",
    log:
        "results/logs/ct_manifest.log",
    benchmark:
        "results/benchmarks/ct_manifest.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/ct_manifest.py"


rule preprocess_reports:
    input:
        reports=config["data"]["ct"]["reports"],
    output:
        "results/cache/ct/reports.parquet",
    log:
        "results/logs/preprocess_reports.log",
    benchmark:
        "results/benchmarks/preprocess_reports.tsv"
    conda:
        "../envs/data.yaml"
    params:
        studies=STUDY_IDS,
    script:
        "../workflow_scripts/preprocess_reports.py"


rule preprocess_pose:
    input:
        pose=config["data"]["pose"]["path"],
    output:
        shards=directory("results/cache/pose/shards"),
        manifest="results/cache/pose/manifest.parquet",
        sequences="results/cache/pose/sequences.safetensors",
    log:
        "results/logs/preprocess_pose.log",
    benchmark:
        "results/benchmarks/preprocess_pose.tsv"
    conda:
        "../envs/data.yaml"
    params:
        pose=config_subset("preprocess", "pose"),
    script:
        "../workflow_scripts/preprocess_pose.py"
