"""The seeded held-out split of Reg2RG studies (pure Python + numpy: the Snakefile imports it).

Held-out studies are never trained on; the generate / evaluate stages write and score
their reports. The draw depends only on the sorted study ids and the configured seed, so
the DAG knows both parts before any job runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from strata.reg2rg.config import Reg2RGSplitConfig


def held_out_studies(study_ids: Iterable[str], split: Reg2RGSplitConfig | None) -> list[str]:
    """The held-out study ids, sorted (all studies when ``split`` is None: nothing is held out
    of training, and the reports are generated for the training studies)."""
    ids = sorted(set(study_ids))
    if split is None:
        return ids
    if len(ids) < 2:
        raise ValueError(f"reg2rg.split: a held-out split needs at least 2 studies, got {len(ids)}")
    if split.held_out >= len(ids):
        raise ValueError(f"reg2rg.split.held_out = {split.held_out} leaves no training study ({len(ids)} studies)")
    order = np.random.default_rng(split.seed).permutation(len(ids))
    return sorted(ids[i] for i in order[: split.held_out])


def training_studies(study_ids: Iterable[str], split: Reg2RGSplitConfig | None) -> list[str]:
    """The studies Reg2RG trains on (all but the held-out ones), sorted."""
    ids = sorted(set(study_ids))
    if split is None:
        return ids
    test = set(held_out_studies(ids, split))
    return [s for s in ids if s not in test]
