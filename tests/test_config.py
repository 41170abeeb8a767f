"""Config validation: a wrong key or value stops the run with a message naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TEST_CONFIG, copy_workflow, planned_jobs, run_snakemake

from strata.config import ConfigError, StrataConfig, from_dict, load_config
from strata.evaluation.targets import EMBEDDING_FAMILIES
from strata.schema import validate_config

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def changed(**edits: object) -> dict:
    """A copy of the default config with dotted keys set (``None`` deletes the key)."""
    config = copy.deepcopy(DEFAULT)
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return config


@pytest.mark.parametrize("path", ["config/config.yaml", "config/full.yaml"])
def test_shipped_configs_are_valid(path):
    raw = yaml.safe_load((REPO / path).read_text())
    validate_config({**raw, "data": {**raw["data"], "demo": True}})
    assert isinstance(from_dict(StrataConfig, raw), StrataConfig)


def dotted_keys(node: object, prefix: str = "") -> set[str]:
    """Every key path of a parsed YAML tree (``a.b.c``), values dropped."""
    if not isinstance(node, dict):
        return set()
    return {path for key, value in node.items()
            for path in {f"{prefix}{key}", *dotted_keys(value, f"{prefix}{key}.")}}


def test_test_config_is_valid_and_has_the_default_keys():
    """config/test.yaml, the workflow tests' --configfile (which replaces the default wholly), is
    a valid demo config with every key of config/config.yaml outside ``models:`` and no other,
    and runs every model family of the default and its embedding families on both data kinds:
    the two never drift apart."""
    test = yaml.safe_load(TEST_CONFIG.read_text())
    validate_config(test, source=str(TEST_CONFIG))
    assert from_dict(StrataConfig, test).data.demo
    outside = {key: value for key, value in DEFAULT.items() if key != "models"}
    test_outside = {key: value for key, value in test.items() if key != "models"}
    missing = sorted(dotted_keys(outside) - dotted_keys(test_outside))
    extra = sorted(dotted_keys(test_outside) - dotted_keys(outside))
    assert (missing, extra) == ([], []), f"config/test.yaml lacks {missing}, has extra {extra}"
    assert set(DEFAULT["models"]) <= {family for family, runs in test["models"].items() if runs}

    def embedding_data(models: dict) -> set[str]:
        return {run["data"] for family in EMBEDDING_FAMILIES for run in models.get(family, {}).values()}

    assert embedding_data(DEFAULT["models"]) <= embedding_data(test["models"])


def test_test_config_studies_hold_every_finding_class_twice():
    """The few CT studies of config/test.yaml (its seed picks them) hold every class of every
    probed finding at least twice, so the CT probes train on every class, and a DICOM study."""
    from collections import Counter

    from strata.ct.demo_plan import demo_plan, nodule_size_class

    cfg = load_config(TEST_CONFIG)
    plans = demo_plan(cfg.data.ct, cfg.demo.ct, cfg.seed)
    findings = {"nodule": Counter(nodule_size_class(p.findings.nodule_mm) for p in plans),
                "cardiomegaly": Counter(p.findings.cardiomegaly for p in plans),
                "effusion": Counter(p.findings.effusion for p in plans)}
    assert {name: len(counts) for name, counts in findings.items()} == {"nodule": 3, "cardiomegaly": 2, "effusion": 3}
    assert all(n >= 2 for counts in findings.values() for n in counts.values()), findings
    assert any(p.kind == "dicom" for p in plans)


CASES = [
    (changed(preprocess__pose__windw=64), r"key preprocess\.pose\.windw: unknown key"),
    (changed(preprocess__pose__window="abc"), r"preprocess\.pose\.window: 'abc' is not of type 'integer'"),
    (changed(preprocess__ct__on_missing_slice="ignore"), r"preprocess\.ct\.on_missing_slice: 'ignore' is not one of"),
    (changed(preprocess__ct__shape=[64, 64]), r"preprocess\.ct\.shape"),
    (changed(seed=None), r"key seed: missing"),
    (changed(data__demo=False, data__ct__nifti_root="does/not/exist"), r"data\.ct\.nifti_root: data path"),
    (changed(monitor__log_evry=5), r"key monitor\.log_evry: unknown key"),
    (changed(monitor__log_every=0), r"monitor\.log_every: 0 is less than the minimum"),
]


@pytest.mark.parametrize(("config", "message"), CASES)
def test_library_validation_names_the_key(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_typed_config_refuses_unknown_keys():
    raw = changed(preprocess__ct__spacng=[1, 1, 1])
    with pytest.raises(ConfigError, match=r"config\.preprocess\.ct: unknown key\(s\) 'spacng'"):
        from_dict(StrataConfig, raw)


def test_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match=f"{path}: cannot read config file"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


DUPLICATED = "seed: 1\ndata:\n  demo: true\nseed: 2\n"


def test_a_key_given_twice_is_an_error_naming_the_file_and_key(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(DUPLICATED)
    with pytest.raises(ConfigError, match=r"twice\.yaml: cannot read config file: duplicate key 'seed' on line 4 "
                                          r"\(first on line 1\)"):
        load_config(path)


def test_snakemake_refuses_a_configfile_with_a_key_given_twice(workflow):
    path = workflow / "twice.yaml"
    path.write_text(yaml.safe_dump(changed()) + "seed: 7\n")
    proc = run_snakemake(workflow, "-n", "--cores", "1", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "twice.yaml: cannot read config file: duplicate key 'seed'" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.mark.parametrize(("config", "needle"), [
    (changed(preprocess__pose__windw=64), "override.yaml: key preprocess.pose.windw: unknown key"),
    (changed(preprocess__pose__window="abc"), "override.yaml: key preprocess.pose.window: 'abc' is not of type"),
    (changed(data__demo=False, data__ct__nifti_root="does/not/exist"), "key data.ct.nifti_root: data path"),
    (changed(preprocess__ct__hu_window=[200, -1000]),
     "config.preprocess.ct: hu_window [200, -1000]: the lower bound must be below the upper one"),
    (changed(preprocess__ct__out_range=[0, 0]), "config.preprocess.ct: out_range [0, 0] maps every voxel to one value"),
])
def test_snakemake_stops_before_any_job_naming_the_key(workflow, config, needle):
    path = workflow / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(workflow, "-n", "--cores", "1", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (workflow / "results").exists() and not (workflow / "data").exists()


def test_snakemake_names_a_malformed_default_config(tmp_path):
    workflow = copy_workflow(tmp_path / "wf")
    (workflow / "config" / "config.yaml").write_text("seed: [1,\n")
    proc = run_snakemake(workflow, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "config/config.yaml: cannot read config file" in proc.stdout + proc.stderr


def test_top_level_typo_on_the_command_line_is_one_line(workflow):
    proc = run_snakemake(workflow, "-n", "--cores", "1", "--config", "seedd=3", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config/config.yaml with --config: key seedd: unknown key" in text
    assert len(text.splitlines()) < 15, text  # not Snakemake's dump of the schema and the config


def test_a_configfile_is_the_whole_config(workflow):
    """The demo default is not merged under a --configfile: a partial file names what it lacks."""
    path = workflow / "partial.yaml"
    path.write_text(yaml.safe_dump({"seed": 3}))
    proc = run_snakemake(workflow, "-n", "--cores", "1", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "partial.yaml: key data: missing" in proc.stdout + proc.stderr
    assert "key models: missing" in proc.stdout + proc.stderr


def test_a_configfile_without_a_run_drops_it_from_the_dag(workflow):
    config = changed()
    del config["models"]["hjepa"]
    path = workflow / "no_hjepa.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = planned_jobs(workflow, "--configfile", str(path))
    assert "train_hjepa" not in plan and plan["train_hiera3d"] == 2
