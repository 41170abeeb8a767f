# strata: CT and pose data -> cached features -> hierarchical models -> per-checkpoint
# generation, evaluation and figures. See README.md; the stages are in rules/*.smk.
from snakemake.utils import min_version, validate
from strata.config import read_yaml

min_version("9.0")

# a malformed default config is an error naming the file (Snakemake's own message does not)
read_yaml("config/config.yaml")


configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/reg2rg.smk"
include: "rules/common_outputs.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        final_targets(),
