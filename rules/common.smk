# Typed config, the study table and target lists; rules stay free of lambdas.
from strata.config import StrataConfig, from_dict
from strata.ct.layout import demo_studies, discover_studies
from strata.ct.shards import shard_members
from strata.reg2rg.split import held_out_studies, training_studies
from strata.reg2rg.weight_paths import all_weights, weight_problems
from snakemake.logging import logger


def workflow_file(path):
    """A project file the config names by a relative path (config/deepspeed/zero2.json):
    the working directory's copy if there is one, else the workflow's own."""
    if path and not Path(path).exists() and (Path(workflow.basedir) / path).exists():
        return str(Path(workflow.basedir) / path)
    return path


config["reg2rg"]["deepspeed"] = workflow_file(config["reg2rg"]["deepspeed"])
CFG = from_dict(StrataConfig, config, where="config")

if CFG.data.demo:
    STUDIES = demo_studies(CFG.data.ct, CFG.demo.ct, CFG.seed)
else:
    STUDIES = discover_studies(CFG.data.ct)
STUDY = {study.study_id: study for study in STUDIES}
STUDY_IDS = sorted(STUDY)
# Per-study stages run as CFG.preprocess.ct.shards jobs (shard name -> its studies).
CT_SHARDS = shard_members(STUDY_IDS, CFG.preprocess.ct.shards)

# Per-study cache files, spelled once (expand() them over study ids).
CT_STUDY_TENSORS = "results/cache/ct/studies/{study}.safetensors"
CT_STUDY_ROW = "results/cache/ct/rows/{study}.parquet"
REG2RG_STUDY_TOKENS = "results/reg2rg/tokens/{study}.safetensors"
CT_STUDY_FILES = expand(CT_STUDY_TENSORS, study=STUDY_IDS)  # every study's cache, listed once

# Reg2RG needs published weights; while any is missing the default target leaves it out
# (the other families still run) and its rules, asked for by name, fail naming the key.
REG2RG_PROBLEMS = weight_problems(all_weights(CFG.reg2rg))
REG2RG = None if REG2RG_PROBLEMS else config["reg2rg"]
if REG2RG_PROBLEMS:
    logger.warning(
        "Reg2RG is left out of the default target (the other families run):\n  "
        + "\n  ".join(REG2RG_PROBLEMS)
    )


wildcard_constraints:
    study="[A-Za-z0-9_.-]+",


def _sorted(value):
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def config_subset(*keys):
    """The config section a rule depends on, as its params.

    Keys are sorted so that Snakemake's params trigger fires on a changed value only,
    never on the order in which a config file lists its keys.
    """
    node = config
    for key in keys:
        node = node[key]
    return _sorted(node)


def ct_shard_inputs(study_ids):
    """The volume files and region masks of a shard's studies."""
    return [p for study in ct_shard_plan(study_ids) for p in (*study["files"], *study["masks"])]


def ct_shard_plan(study_ids):
    """Params of a preprocess_ct shard: each study's files and masks, in output order."""
    return [
        {
            "study": sid,
            "files": [str(p) for p in STUDY[sid].files],
            "masks": [str(p) for _, p in STUDY[sid].masks],
        }
        for sid in study_ids
    ]


def demo_ct_outputs():
    """Every file the CT demo writer produces, known from the config alone."""
    files = [str(CFG.data.ct.reports)]
    for study in STUDIES:
        files += [str(p) for p in study.files] + [str(p) for _, p in study.masks]
    return files


def pose_long_path():
    """The long-format copy the pose demo writes beside the MABe22 .npy file."""
    return str(CFG.data.pose.path.with_suffix(".parquet"))


def final_targets():
    """The default target: everything the DAG can build from the config."""
    # every per-study cache is a target: Snakemake does not rebuild a deleted input of a job
    # whose outputs exist (temp() semantics), but it does rebuild a missing target
    return [
        "results/cache/ct/manifest.parquet",
        *CT_STUDY_FILES,
        *(expand(REG2RG_STUDY_TOKENS, study=STUDY_IDS) if REG2RG else []),
        "results/cache/ct/reports.parquet",
        "results/cache/pose/manifest.parquet",
        *training_targets(),
        *reg2rg_targets(),
        *evaluation_final_targets(config["models"], REG2RG),
    ]


def model_runs(family):
    """Run names of a model family in the config (may be none)."""
    return sorted(config.get("models", {}).get(family, {}))


def run_pattern(family):
    """Wildcard constraint matching exactly the configured runs of a family."""
    return "|".join(model_runs(family)) or "(?!)"


def run_config(family):
    """Params function: the config subset one run of ``family`` depends on."""

    def subset(wildcards):
        return config_subset("models", family, wildcards.run)

    return subset


def run_gpus(family):
    """Resource function: GPUs of one run of ``family`` (its ``train.gpus``; 0 = CPU)."""

    def gpus(wildcards):
        return CFG.models[family][wildcards.run].train.gpus

    return gpus


def run_threads(family):
    """Threads function: per training process one main thread plus its loader workers."""

    def threads(wildcards):
        train = CFG.models[family][wildcards.run].train
        return max(2, train.gpus * (train.num_workers + 1))

    return threads


def training_inputs(family):
    """Input function: the cached features a run of ``family`` trains on."""

    def inputs(wildcards):
        run = config["models"][family][wildcards.run]
        if run.get("unit", "windows") == "sequences":
            return {"sequences": "results/cache/pose/sequences.safetensors"}
        if run["data"] == "pose":
            return {
                "manifest": "results/cache/pose/manifest.parquet",
                "shards": "results/cache/pose/shards",
            }
        return ct_cache_inputs()

    return inputs


def ct_cache_inputs():
    """The CT manifest and every study's cache file (the jobs read the files the manifest
    lists, so a deleted or rebuilt study cache must re-run them)."""
    return {
        "manifest": "results/cache/ct/manifest.parquet",
        "studies": CT_STUDY_FILES,
    }


def training_targets():
    return [
        f"results/{family}/{run}/train_log.parquet"
        for family in sorted(config.get("models", {}))
        for run in model_runs(family)
    ]


# --------------------------------------------------------------------------- Reg2RG


def existing(*paths):
    """The given paths that exist: published weights are inputs (a changed file re-runs
    its jobs), but a missing one must not stop the DAG; the job itself then names it."""
    return [str(p) for p in paths if p and Path(p).exists()]


def reg2rg_weight_inputs():
    """Published weight files the frozen encoders read (none in the demo)."""
    section = config["reg2rg"]
    return existing(section["encoder"]["vit_weights"], section["checkpoint"])


def reg2rg_tokenizer_inputs(wildcards):
    return {
        "reports": "results/cache/ct/reports.parquet",
        "base": existing(config["reg2rg"]["tokenizer"]["pretrained"]),
    }


def reg2rg_train_inputs(wildcards):
    section = config["reg2rg"]
    extra = existing(
        section["deepspeed"],
        section["adapter_weights"],
        section["checkpoint"],
        section["llm"]["pretrained"],
    )
    return {
        "tokenizer": "results/reg2rg/tokenizer",
        "reports": "results/cache/ct/reports.parquet",
        "tokens": expand(
            REG2RG_STUDY_TOKENS,
            study=training_studies(STUDY_IDS, CFG.reg2rg.split),
        ),
        "extra": extra,
    }


def reg2rg_training_section():
    """Params of train_reg2rg: the reg2rg section without the decoding settings, so a
    change of ``reg2rg.generation`` re-runs generation only, never the training."""
    return {k: v for k, v in config_subset("reg2rg").items() if k != "generation"}


def reg2rg_gpus(wildcards):
    """Resource function: GPUs of train_reg2rg (``reg2rg.gpus``)."""
    return CFG.reg2rg.gpus


def reg2rg_threads(wildcards):
    """Threads function: per training process one main thread plus its loader workers."""
    return max(2, CFG.reg2rg.gpus * (CFG.reg2rg.train.num_workers + 1))


def generate_gpus(wildcards):
    """Resource function: generation runs on one GPU when its run trained on GPUs."""
    if wildcards.family == "reg2rg":
        return min(CFG.reg2rg.gpus, 1)
    return min(CFG.models[wildcards.family][wildcards.run].train.gpus, 1)


def reg2rg_targets():
    """Final outputs of the Reg2RG chain (the train rule's step log and checkpoints);
    none while its weights are missing."""
    return [f"results/reg2rg/{REG2RG['run']}/train_log.parquet"] if REG2RG else []
