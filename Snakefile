# strata: CT and pose data -> cached features -> hierarchical models -> per-checkpoint
# generation, evaluation and figures. See README.md; the stages are in rules/*.smk.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"


rule all:
    default_target: True
    input:
        final_targets(),
