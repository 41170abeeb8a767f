# Synthetic demo data in the real on-disk formats (only when data.demo is true).

if config["data"]["demo"]:

    rule demo_data_ct:
        output:
            demo_ct_outputs(),
        log:
            "results/logs/demo_data_ct.log",
        benchmark:
            "results/benchmarks/demo_data_ct.tsv"
        conda:
            "../envs/data.yaml"
        params:
            data=config_subset("data", "ct"),
            demo=config_subset("demo", "ct"),
            seed=config["seed"],
        script:
            "../workflow_scripts/demo_data_ct.py"

    rule demo_data_pose:
        output:
            npy=config["data"]["pose"]["path"],
            parquet=pose_long_path(),
            # the demo's MABe22 test-label file, where data.pose.labels names one
            **({"labels": config["data"]["pose"]["labels"]} if config["data"]["pose"].get("labels") else {}),
        log:
            "results/logs/demo_data_pose.log",
        benchmark:
            "results/benchmarks/demo_data_pose.tsv"
        conda:
            "../envs/data.yaml"
        params:
            demo=config_subset("demo", "pose"),
            seed=config["seed"],
        script:
            "../workflow_scripts/demo_data_pose.py"
