# Helpers of the generate / evaluate / figures rules: target lists, input and params
# functions (the rules stay free of lambdas). Every path follows from config["models"]
# and each run's checkpoint schedule (strata.evaluation.targets).
from strata.ct.demo_plan import demo_plan, nodule_size_class
from dataclasses import asdict

from strata.evaluation.targets import (
    EMBEDDING_FAMILIES,
    evaluation_final_targets,
    model_checkpoints,
    reg2rg_checkpoints,
)


def all_checkpoints():
    """(family, run, step) of every scheduled checkpoint: config["models"] and Reg2RG."""
    return model_checkpoints(config.get("models", {}), reg2rg_checkpoints(REG2RG))


def evaluated(family):
    """Run names of ``family`` that have generate / evaluate jobs."""
    return sorted({r for f, r, _ in all_checkpoints() if f == family})


def evaluated_families():
    """Wildcard constraint: the model families of config["models"] and Reg2RG."""
    return "|".join(sorted({f for f, _, _ in all_checkpoints()})) or "(?!)"


def evaluated_runs():
    """Wildcard constraint: every configured run name (any family)."""
    return "|".join(sorted({r for _, r, _ in all_checkpoints()})) or "(?!)"


def run_data(wildcards):
    """Params function: ``pose`` or ``ct``, the cached features the run trained on."""
    if wildcards.family == "reg2rg":
        return "ct"
    return config["models"][wildcards.family][wildcards.run]["data"]


def run_velocity_gain(wildcards):
    """Params function: the run's architecture ``velocity_gain`` (0 where it has none)."""
    run = config["models"].get(wildcards.family, {}).get(wildcards.run, {})
    return run.get("architecture", {}).get("velocity_gain", 0.0)


def cache_inputs(wildcards):
    """The cached features a run reads (pose shards or the CT manifest)."""
    if run_data(wildcards) == "pose":
        return {
            "manifest": "results/cache/pose/manifest.parquet",
            "shards": "results/cache/pose/shards",
        }
    return ct_cache_inputs()


def reg2rg_held_out():
    """Studies Reg2RG never trains on; its generate jobs write their reports."""
    return held_out_studies(STUDY_IDS, CFG.reg2rg.split)


def generate_inputs(wildcards):
    inputs = {
        "checkpoints": f"results/{wildcards.family}/{wildcards.run}/checkpoints",
        **cache_inputs(wildcards),
    }
    if wildcards.family == "reg2rg":
        inputs["tokenizer"] = "results/reg2rg/tokenizer"
        inputs["reports"] = "results/cache/ct/reports.parquet"
        inputs["tokens"] = expand(
            REG2RG_STUDY_TOKENS, study=reg2rg_held_out()
        )
    return inputs


def reg2rg_generation(wildcards):
    """Params function: Reg2RG decoding settings and held-out studies (empty elsewhere)."""
    if wildcards.family != "reg2rg":
        return {}
    return {
        "decoding": config_subset("reg2rg", "generation"),
        "studies": reg2rg_held_out(),
    }


def generation_params(wildcards):
    """Params function: the generation keys the family's outputs depend on (the pose VAE
    sampling section only for pose VAE runs)."""
    section = config_subset("evaluation", "generation")
    if wildcards.family == "posevae":
        return section
    return {key: value for key, value in section.items() if key != "posevae"}


def ct_findings():
    """Params: study -> finding -> class, the CT probe labels (demo plan; none on real data)."""
    if not CFG.data.demo:
        return {}
    return {
        plan.study_id: {
            "nodule_size": nodule_size_class(plan.findings.nodule_mm),
            "cardiomegaly": str(plan.findings.cardiomegaly).lower(),
            "effusion": plan.findings.effusion,
        }
        for plan in demo_plan(CFG.data.ct, CFG.demo.ct, CFG.seed)
    }


def evaluate_findings(wildcards):
    """Params function: CT finding labels for CT embedding runs, nothing elsewhere."""
    if wildcards.family == "reg2rg":
        return {}
    return ct_findings() if run_data(wildcards) == "ct" else {}


def evaluate_demo_findings(wildcards):
    """Params function: Reg2RG on the demo: study -> the findings its sentences state."""
    if wildcards.family != "reg2rg" or not CFG.data.demo:
        return {}
    return {
        plan.study_id: asdict(plan.findings)
        for plan in demo_plan(CFG.data.ct, CFG.demo.ct, CFG.seed)
    }


def evaluate_inputs(wildcards):
    inputs = {
        "generated": "results/{family}/{run}/generate/{step}/outputs.parquet".format(
            **wildcards
        ),
        **cache_inputs(wildcards),
    }
    labels = pose_task_labels(wildcards)
    if labels:
        inputs["labels"] = labels
    if wildcards.family in EMBEDDING_FAMILIES and int(wildcards.step) != 0:
        # the random initialisation (checkpoint step 0): the random_init baseline
        inputs["init"] = "results/{family}/{run}/generate/0/outputs.parquet".format(**wildcards)
    return inputs


def pose_task_labels(wildcards):
    """The MABe22-format label file (data.pose.labels) for pose embedding runs, else None:
    an input of their evaluate jobs only, so a label change re-runs just those."""
    if wildcards.family not in EMBEDDING_FAMILIES or run_data(wildcards) != "pose":
        return None
    return config["data"]["pose"].get("labels") or None


def all_metrics():
    return [
        f"results/{family}/{run}/evaluate/{step}/metrics.parquet"
        for family, run, step in all_checkpoints()
    ]


def run_steps(wildcards):
    """Params function: the run's checkpoint steps."""
    return [
        s
        for f, r, s in all_checkpoints()
        if (f, r) == (wildcards.family, wildcards.run)
    ]


def run_metrics(wildcards):
    return [
        f"results/{wildcards.family}/{wildcards.run}/evaluate/{step}/metrics.parquet"
        for step in run_steps(wildcards)
    ]


def run_generated(wildcards):
    return [
        f"results/{wildcards.family}/{wildcards.run}/generate/{step}/outputs.parquet"
        for step in run_steps(wildcards)
    ]


def figure_inputs(wildcards):
    return {
        "checkpoints": f"results/{wildcards.family}/{wildcards.run}/checkpoints",
        "train_log": f"results/{wildcards.family}/{wildcards.run}/train_log.parquet",
        "metrics": run_metrics(wildcards),
        **cache_inputs(wildcards),
    }


def best_rule(wildcards):
    """Params function: the family's best-checkpoint metric and direction."""
    return config_subset("evaluation", "best_checkpoint", wildcards.family)
