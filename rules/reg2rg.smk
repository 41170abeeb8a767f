# Reg2RG (docs/design.md section 4.4): tokenizer -> frozen-encoder token cache -> training.
# The token cache runs per shard of studies, like preprocess_ct: the encoders are built once
# per job, and a changed study re-encodes only its own shard.


rule reg2rg_tokenizer:
    input:
        unpack(reg2rg_tokenizer_inputs),
    output:
        directory("results/reg2rg/tokenizer"),
    log:
        "results/logs/reg2rg_tokenizer.log",
    benchmark:
        "results/benchmarks/reg2rg_tokenizer.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        tokenizer=config_subset("reg2rg", "tokenizer"),
        num_latents=config["reg2rg"]["perceiver"]["num_latents"],
    script:
        "../workflow_scripts/reg2rg_tokenizer.py"


for SHARD, SHARD_STUDIES in CT_SHARDS.items():

    rule:
        name:
            f"reg2rg_token_cache_{SHARD}"
        input:
            ct=expand(CT_STUDY_TENSORS, study=SHARD_STUDIES),
            weights=reg2rg_weight_inputs(),
        output:
            expand(REG2RG_STUDY_TOKENS, study=SHARD_STUDIES),
        log:
            f"results/logs/reg2rg_token_cache/{SHARD}.log",
        benchmark:
            f"results/benchmarks/reg2rg_token_cache/{SHARD}.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        params:
            encoder=config_subset("reg2rg", "encoder"),
            checkpoint=config["reg2rg"]["checkpoint"],
            seed=config["seed"],
        script:
            "../workflow_scripts/reg2rg_token_cache.py"


rule train_reg2rg:
    input:
        unpack(reg2rg_train_inputs),
    output:
        checkpoints=directory("results/reg2rg/{run}/checkpoints"),
        log="results/reg2rg/{run}/train_log.parquet",
    log:
        "results/logs/train_reg2rg/{run}.log",
    benchmark:
        "results/benchmarks/train_reg2rg/{run}.tsv"
    wildcard_constraints:
        run=config["reg2rg"]["run"],
    conda:
        "../envs/torch.yaml"
    threads: reg2rg_threads
    resources:
        gpu=reg2rg_gpus,
    params:
        reg2rg=reg2rg_training_section(),
        seed=config["seed"],
    script:
        "../workflow_scripts/reg2rg_train.py"
