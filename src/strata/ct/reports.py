"""The region report table (RadGenome-ChestCT ``Volumename, Anatomy, Sentence``).

An empty Anatomy is the whole-study report; every other Anatomy must be one of the ten
regions. The cached table has one row per (study, region) with ``region = ""`` for the
whole report, and only studies the pipeline knows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from strata.ct.errors import CTInputError
from strata.ct.regions import REGIONS
from strata.io.atomic import write_parquet

REQUIRED_COLUMNS = ("Volumename", "Anatomy", "Sentence")


def read_reports(path: Path, study_ids: list[str]) -> pd.DataFrame:
    """Read and check the report CSV; returns columns ``study_id, region, sentence``."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise CTInputError(f"{path}: the report table is empty (expected a header "
                           f"{','.join(REQUIRED_COLUMNS)} and one row per study and region)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CTInputError(f"{path}: cannot read report table ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise CTInputError(f"{path}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    anatomy = raw["Anatomy"].str.strip()
    unknown = ~anatomy.isin(("", *REGIONS))
    if unknown.any():
        line = int(unknown.idxmax()) + 2  # 1-based, after the header line
        raise CTInputError(f"{path}: line {line} names unknown region {raw['Anatomy'][unknown.idxmax()]!r}; "
                           f"expected one of {list(REGIONS)} or empty for the whole report")
    table = pd.DataFrame({
        "study_id": raw["Volumename"].str.strip().str.removesuffix(".nii.gz"),
        "region": anatomy,
        "sentence": raw["Sentence"].str.strip(),
    })
    if table.empty:
        raise CTInputError(f"{path}: the report table has a header but no rows")
    table = table[table["study_id"].isin(study_ids)]
    if table.empty:
        examples = ", ".join(sorted(raw["Volumename"].unique())[:3])
        raise CTInputError(f"{path}: no row names a study of the dataset (its Volumename values, e.g. {examples}, "
                           f"match none of the {len(study_ids)} studies, e.g. {', '.join(sorted(study_ids)[:3])})")
    dup = table.duplicated(["study_id", "region"])
    if dup.any():
        first = table[dup].iloc[0]
        raise CTInputError(f"{path}: study {first.study_id!r} has more than one row for region {first.region!r}")
    order = {r: i for i, r in enumerate(("", *REGIONS))}
    return (table.assign(_o=table["region"].map(order))
            .sort_values(["study_id", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True))


def run_preprocess_reports(path: Path, study_ids: list[str], output: Path) -> None:
    write_parquet(read_reports(path, study_ids), output)
