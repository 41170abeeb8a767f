"""Validation of a raw config mapping against ``config/schema.yaml``.

The Snakefile uses :func:`snakemake.utils.validate` on the same schema; this module gives
library users (tests, notebooks, bench scripts) the same check without Snakemake, plus
the checks a schema cannot express (real data paths must exist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from strata.config import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key (not the schema or the whole config)."""
    parent = _key_path(error)
    prefix = f"{parent}." if parent else ""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(str(k) for k in error.instance if k not in allowed)
        return "; ".join(f"key {prefix}{k}: unknown key" for k in unknown)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        hint = "" if parent else " (a config file describes the whole run: start from a copy of config/config.yaml)"
        return "; ".join(f"key {prefix}{k}: missing" for k in missing) + hint
    return f"key {parent or '<top level>'}: {error.message}"


def validate_config(raw: Any, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key of every schema violation, one line each."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(f"{source}: {_describe(e)}" for e in errors))
    check_data_paths(raw, source)


def check_data_paths(raw: dict[str, Any], source: str = "config") -> None:
    """Real data (``data.demo: false``) must exist where the config says."""
    if raw["data"]["demo"]:
        return
    keys = [("data.ct.nifti_root", raw["data"]["ct"]["nifti_root"]),
            ("data.ct.reports", raw["data"]["ct"]["reports"]),
            ("data.pose.path", raw["data"]["pose"]["path"])]
    for optional in ("dicom_root", "dicom_mask_root"):
        if raw["data"]["ct"].get(optional):
            keys.append((f"data.ct.{optional}", raw["data"]["ct"][optional]))
    if raw["data"]["pose"].get("labels"):
        keys.append(("data.pose.labels", raw["data"]["pose"]["labels"]))
    for key, value in keys:
        if not Path(value).exists():
            raise ConfigError(f"{source}: key {key}: data path {value!r} does not exist")
