# strata: CT and pose data -> cached features -> hierarchical models -> per-checkpoint
# generation, evaluation and figures. See README.md; the stages are in rules/*.smk.
from pathlib import Path

from snakemake.utils import min_version, validate
from strata.config import read_yaml
from strata.schema import SCHEMA_PATH, validate_config

min_version("9.0")

# Every file of the workflow is found from the Snakefile, so it runs from any working
# directory (`snakemake -s /path/to/strata/Snakefile --directory /scratch/project`); data
# and result paths in the config are relative to the working directory.
DEFAULT_CONFIG = Path(workflow.basedir) / "config" / "config.yaml"

# A --configfile describes the whole run: the embedded demo default is read only when no
# config file is given (Snakemake would otherwise merge the given file over it, keeping
# the demo's model runs in the DAG). --config KEY=VALUE edits either.
if not workflow.overwrite_configfiles:
    read_yaml(DEFAULT_CONFIG)  # a malformed default is an error naming the file

    configfile: DEFAULT_CONFIG


# Snakemake has parsed the --configfile(s) already; read them again to refuse what its
# parser accepts silently (a key given twice: the last one would win).
for _given in workflow.overwrite_configfiles:
    read_yaml(_given)


# the project's validator names the first bad key in one line; Snakemake's own check
# (which would dump the schema and the config) then only confirms it
CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or str(DEFAULT_CONFIG)
if workflow.config_settings.config:
    CONFIG_SOURCE += " with --config"
validate_config(config, source=CONFIG_SOURCE)
validate(config, schema=str(SCHEMA_PATH))


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
