"""The conda environments of ``--sdm conda``: every rule's env holds what its script imports,
pinned as in pyproject.toml.

The imports are read statically (AST) from the rule's workflow script and every ``strata``
module it reaches, so optional imports inside third-party packages do not count; import
names map to distributions through ``importlib.metadata.packages_distributions``.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# Needs that no import shows: pycocoevalcap's METEOR runs a Java jar.
NON_PYTHON = {"evaluate": {"openjdk"}}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def rule_envs() -> list[tuple[str, str]]:
    """(env name, workflow script name) for every rule with a ``conda:`` and a ``script:``."""
    pairs = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        envs = re.findall(r'conda:\s*\n\s*"\.\./envs/(\w+)\.yaml"', text)
        scripts = re.findall(r'script:\s*\n\s*"\.\./workflow_scripts/(\w+)\.py"', text)
        assert len(envs) == len(scripts), f"{smk.name}: a rule with a script but no conda env (or the reverse)"
        pairs += zip(envs, scripts)
    return pairs


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(script: Path) -> set[str]:
    """Top-level names of the non-strata, non-stdlib modules ``script`` imports, transitively through strata."""
    found, seen, todo = set(), set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names += [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "strata":
                    parts = name.split(".")
                    for i in range(len(parts), 0, -1):  # the module itself and its parent packages
                        if (f := module_file(".".join(parts[:i]))) is not None:
                            todo.append(f)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def env_packages(env: str) -> dict[str, str]:
    """Normalised package name -> version specifier (conda and pip sections)."""
    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    entries = []
    for dep in spec["dependencies"]:
        entries += dep["pip"] if isinstance(dep, dict) else [dep]
    packages = {}
    for entry in entries:
        if isinstance(entry, str) and "=" in entry and not re.search(r"[<>!~]|==", entry):  # conda "python=3.11"
            name, version = entry.split("=", 1)
            packages[normalise(name)] = f"=={version}"
        else:
            req = Requirement(entry)
            packages[normalise(req.name)] = str(req.specifier)
    return packages


PAIRS = rule_envs()
DISTRIBUTIONS = md.packages_distributions()


def test_every_rule_with_a_script_has_an_env():
    assert len(PAIRS) >= 15 and {env for env, _ in PAIRS} >= {"data", "torch", "evaluate"}


@pytest.mark.parametrize("env,script", sorted(set(PAIRS)), ids=lambda v: str(v))
def test_the_rule_env_holds_what_its_script_imports(env, script):
    have = env_packages(env)
    missing = set()
    for top in third_party_imports(REPO / "workflow_scripts" / f"{script}.py"):
        dists = DISTRIBUTIONS.get(top)
        assert dists, f"{script}.py imports {top!r}, which no installed distribution provides"
        if not any(normalise(d) in have for d in dists):
            missing.add(dists[0])
    missing |= NON_PYTHON.get(env, set()) - set(have)
    assert not missing, f"envs/{env}.yaml lacks {sorted(missing)} needed by workflow_scripts/{script}.py"


@pytest.mark.parametrize("env", sorted({env for env, _ in PAIRS}))
def test_env_pins_follow_pyproject(env):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {normalise(Requirement(r).name): str(Requirement(r).specifier) for r in project["dependencies"]}
    have = env_packages(env)
    assert have["python"].startswith("==3.11")
    differ = {name: (spec, pinned[name]) for name, spec in have.items() if name in pinned and spec != pinned[name]}
    assert not differ, f"envs/{env}.yaml pins differ from pyproject.toml: {differ}"
    assert have["torch"] == "==2.13.0"
