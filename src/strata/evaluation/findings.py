"""Finding-level accuracy of generated reports on the synthetic demo (docs/design.md §3.8).

The demo states its findings in fixed sentences (:func:`strata.ct.demo_plan.region_sentences`):

- lung: ``A small 12 mm nodule is seen in the left lung.`` or ``No pulmonary nodule is seen. ...``
- heart: ``The heart is enlarged.`` or ``Heart size is normal.``
- pleura: ``There is a right pleural effusion.`` or ``No pleural effusion is seen.``

:func:`parse_findings` reads those statements back from a generated region text;
anything it cannot read is ``None`` (and counts as wrong). :func:`finding_accuracy` scores
a set of studies against the demo plan's truth:

==================  ===================================================================
metric              correct when (over the studies it is defined for)
==================  ===================================================================
nodule_presence     nodule stated / denied as in the truth (all studies)
nodule_size         size class none / small (< ``LARGE_NODULE_MM``, 20 mm) / large right (all studies); the
                    stated millimetres decide, the size word only when no number is given
nodule_side         left / right right (studies that have a nodule)
cardiomegaly        enlarged / normal heart right (all studies)
effusion            none / left / right right (all studies)
==================  ===================================================================

``finding_accuracy`` is the mean of the five. :func:`states_normal` tells whether a
region text denies its finding (the ``normal_template`` control picks such sentences).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strata.ct.demo_plan import DemoFindings, nodule_size_class

FINDINGS = ("nodule_presence", "nodule_size", "nodule_side", "cardiomegaly", "effusion")

_NO_NODULE = re.compile(r"\bno (?:pulmonary )?nodules?\b")
_NODULE = re.compile(r"\bnodule\b")
_MM = re.compile(r"(\d+(?:\.\d+)?)\s*mm\b")
_SIZE_WORD = re.compile(r"\b(small|large)\b")
_SIDE = re.compile(r"\b(left|right)\b")
_ENLARGED = re.compile(r"\b(enlarged|cardiomegaly)\b")
_NORMAL_HEART = re.compile(r"\bnormal\b")
_NO_EFFUSION = re.compile(r"\bno (?:pleural )?effusion\b")
_EFFUSION = re.compile(r"\b(left|right)\b[^.]*\beffusion\b")


@dataclass(frozen=True)
class StatedFindings:
    """What a generated report states; ``None`` where it states nothing readable."""

    nodule: bool | None
    nodule_size: str | None  # none | small | large
    nodule_side: str | None  # left | right
    cardiomegaly: bool | None
    effusion: str | None  # none | left | right


def parse_lung(text: str) -> tuple[bool | None, str | None, str | None]:
    """(nodule present, size class, side) stated by a lung text."""
    t = text.lower()
    if _NO_NODULE.search(t):
        return False, "none", None
    if not _NODULE.search(t):
        return None, None, None
    mm, word, side = _MM.search(t), _SIZE_WORD.search(t), _SIDE.search(t)
    if mm:
        size: str | None = nodule_size_class(max(1, round(float(mm.group(1)))))
    else:
        size = word.group(1) if word else None
    return True, size, side.group(1) if side else None


def parse_heart(text: str) -> bool | None:
    """True when the heart text states an enlarged heart, False for a normal one."""
    t = text.lower()
    if _ENLARGED.search(t):
        return True
    return False if _NORMAL_HEART.search(t) else None


def parse_pleura(text: str) -> str | None:
    """``none``, ``left`` or ``right`` effusion stated by a pleura text."""
    t = text.lower()
    if _NO_EFFUSION.search(t):
        return "none"
    m = _EFFUSION.search(t)
    return m.group(1) if m else None


def parse_findings(regions: Mapping[str, str]) -> StatedFindings:
    """The findings stated by a generated report given as {region: text}."""
    nodule, size, side = parse_lung(regions.get("lung", ""))
    return StatedFindings(nodule, size, side, parse_heart(regions.get("heart", "")),
                          parse_pleura(regions.get("pleura", "")))


def states_normal(region: str, text: str) -> bool | None:
    """Whether a region text states its finding as absent (no nodule, normal heart, no
    effusion); ``None`` for a region without a parsed finding."""
    if region == "lung":
        return parse_lung(text)[0] is False
    if region == "heart":
        return parse_heart(text) is False
    if region == "pleura":
        return parse_pleura(text) == "none"
    return None


def finding_correct(stated: StatedFindings, truth: DemoFindings) -> dict[str, float]:
    """Per finding 1.0 (right), 0.0 (wrong or unreadable) or NaN (not defined: side without a nodule)."""
    has_nodule = truth.nodule_mm > 0
    return {
        "nodule_presence": float(stated.nodule is has_nodule),
        "nodule_size": float(stated.nodule_size == nodule_size_class(truth.nodule_mm)),
        "nodule_side": float(stated.nodule_side == truth.nodule_side) if has_nodule else np.nan,
        "cardiomegaly": float(stated.cardiomegaly is truth.cardiomegaly),
        "effusion": float(stated.effusion == truth.effusion),
    }


def finding_accuracy(generated: Sequence[Mapping[str, str]], truths: Sequence[DemoFindings]) -> dict[str, float]:
    """``finding_accuracy/<finding>`` per finding and their mean ``finding_accuracy``
    (a finding defined for no study is NaN and left out of the mean)."""
    if len(generated) != len(truths) or not truths:
        raise ValueError(f"{len(generated)} generated reports for {len(truths)} studies")
    rows = [finding_correct(parse_findings(g), t) for g, t in zip(generated, truths)]
    out = {}
    for name in FINDINGS:
        values = np.array([r[name] for r in rows], dtype=float)
        out[f"finding_accuracy/{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
    defined = [out[f"finding_accuracy/{name}"] for name in FINDINGS if np.isfinite(out[f"finding_accuracy/{name}"])]
    out["finding_accuracy"] = float(np.mean(defined))
    return out
