# CT studies and pose tracks -> cached tensors + parquet manifests.


rule preprocess_ct:
    input:
        unpack(ct_study_inputs),
    output:
        tensors="results/cache/ct/studies/{study}.safetensors",
        row="results/cache/ct/rows/{study}.parquet",
    log:
        "results/logs/preprocess_ct/{study}.log",
    benchmark:
        "results/benchmarks/preprocess_ct/{study}.tsv"
    conda:
        "../envs/data.yaml"
    params:
        ct=config_subset("preprocess", "ct"),
    script:
        "../workflow_scripts/preprocess_ct.py"


rule ct_manifest:
    input:
        rows=expand("results/cache/ct/rows/{study}.parquet", study=STUDY_IDS),
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
