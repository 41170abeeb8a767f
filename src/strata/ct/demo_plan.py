"""What each synthetic demo study contains: regions present, findings and report sentences.

The plan is a pure function of the seed and the demo config, so the Snakefile knows every
demo study (and its mask files) before the writer runs, and the metrics stage can later
check whether a model states the right findings (nodule presence, size and side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from strata.config import CTDataConfig, DemoCTConfig
from strata.ct.regions import REGIONS

OPTIONAL_REGIONS = ("breast", "thyroid")  # absent in some studies, as in real data
#: Nodule sizes (mm, half-open ranges) and the size-class boundary. At the cached 5 x 5 x 9 mm
#: spacing a nodule under ~15 mm is 1-2 voxels of the lung crop and a linear probe on the
#: frozen random ViT's tokens cannot tell it from no nodule (bench/RESULTS.md), so the demo's
#: "small" nodules are 15-19 mm and its "large" ones 24-30 mm.
SMALL_NODULE_RANGE_MM = (15, 20)
LARGE_NODULE_RANGE_MM = (24, 31)
LARGE_NODULE_MM = 20  # nodules of at least this size are "large"


@dataclass(frozen=True)
class DemoFindings:
    """The stated, learnable findings of one synthetic study."""

    nodule_mm: int  # 0 = no nodule
    nodule_side: Literal["left", "right"]
    cardiomegaly: bool
    effusion: Literal["none", "left", "right"]


@dataclass(frozen=True)
class DemoStudyPlan:
    study_id: str
    kind: Literal["nifti", "dicom"]
    regions: tuple[str, ...]
    findings: DemoFindings


def nodule_size_class(size_mm: int) -> Literal["none", "small", "large"]:
    """Size bins used by the finding-level accuracy metric."""
    if size_mm == 0:
        return "none"
    return "small" if size_mm < LARGE_NODULE_MM else "large"


def region_sentences(findings: DemoFindings, regions: tuple[str, ...]) -> dict[str, str]:
    """One sentence group per present region; the lung sentence states the nodule."""
    f = findings
    if f.nodule_mm:
        lung = f"A {nodule_size_class(f.nodule_mm)} {f.nodule_mm} mm nodule is seen in the {f.nodule_side} lung."
    else:
        lung = "No pulmonary nodule is seen. The lung parenchyma is clear."
    sentences = {
        "abdomen": "The visualized upper abdominal organs are unremarkable.",
        "bone": "No lytic or destructive bone lesion is seen.",
        "breast": "The breast tissue appears normal.",
        "esophagus": "The esophagus has normal calibre.",
        "heart": "The heart is enlarged." if f.cardiomegaly else "Heart size is normal.",
        "lung": lung,
        "mediastinum": "No mediastinal lymphadenopathy is seen.",
        "pleura": (f"There is a {f.effusion} pleural effusion." if f.effusion != "none"
                   else "No pleural effusion is seen."),
        "thyroid": "The thyroid gland appears normal.",
        "trachea and bronchie": "The trachea and main bronchi are patent.",
    }
    return {r: sentences[r] for r in REGIONS if r in regions}


#: every (nodule class, cardiomegaly, effusion) combination: 3 x 2 x 3 = 18
FINDING_COMBINATIONS = [(n, c, e) for n in range(3) for c in (False, True) for e in ("none", "left", "right")]


def demo_plan(data: CTDataConfig, demo: DemoCTConfig, seed: int) -> list[DemoStudyPlan]:
    """Deterministic plan of every demo study (NIfTI studies first, then DICOM series).

    Findings are balanced and independent: each block of 18 consecutive studies holds every
    combination once, in a seeded order (so a few studies already show several classes)."""
    plans = []
    order: list[int] = []
    for index in range(demo.n_nifti + demo.n_dicom):
        if index % len(FINDING_COMBINATIONS) == 0:
            block = index // len(FINDING_COMBINATIONS)
            order = list(np.random.default_rng([seed, 18, block]).permutation(len(FINDING_COMBINATIONS)))
        nodule_class, cardiomegaly, effusion = FINDING_COMBINATIONS[order[index % len(FINDING_COMBINATIONS)]]
        rng = np.random.default_rng([seed, 7, index])
        kind: Literal["nifti", "dicom"] = "nifti" if index < demo.n_nifti else "dicom"
        nodule = (0, int(rng.integers(*SMALL_NODULE_RANGE_MM)), int(rng.integers(*LARGE_NODULE_RANGE_MM)))[nodule_class]
        findings = DemoFindings(
            nodule_mm=nodule,
            nodule_side="left" if rng.random() < 0.5 else "right",
            cardiomegaly=cardiomegaly,
            effusion=effusion,
        )
        missing = {r for r in OPTIONAL_REGIONS if rng.random() < 0.35}
        regions = tuple(r for r in REGIONS if r not in missing)
        plans.append(DemoStudyPlan(f"{data.split}_{index + 1}_a_1", kind, regions, findings))
    return plans
