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
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(raw: Any, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key of the first schema violation."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: key {_key_path(e)!s}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))
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
    for key, value in keys:
        if not Path(value).exists():
            raise ConfigError(f"{source}: key {key}: data path {value!r} does not exist")
