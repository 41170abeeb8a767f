# strata: CT and pose data -> cached features -> hierarchical models -> per-checkpoint
# generation, evaluation and figures. See README.md; the stages are in rules/*.smk.
from snakemake.utils import min_version, validate
from strata.config import read_yaml

min_version("9.0")

read_yaml(
    "config/config.yaml"
)  # a malformed default config is an error naming the file


configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/reg2rg.smk"


rule all:
    default_target: True
    input:
        final_targets(),
