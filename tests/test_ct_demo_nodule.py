"""The demo's nodules: sizes per class, placement near mid-lung, density (strata.ct.demo)."""

from __future__ import annotations

import numpy as np

from strata.config import load_config
from strata.ct.demo import NODULE_HU, NODULE_SPREAD_MM, phantom
from strata.ct.demo_plan import (
    LARGE_NODULE_MM,
    LARGE_NODULE_RANGE_MM,
    SMALL_NODULE_RANGE_MM,
    DemoFindings,
    demo_plan,
    nodule_size_class,
)
from strata.ct.regions import REGIONS

SHAPE, SPACING = (80, 80, 48), (4.0, 4.0, 6.0)  # the demo's grid (config/config.yaml)


def test_demo_nodule_sizes_fall_in_their_class_ranges():
    """Every planned nodule is in its class's range, and the ranges sit on either side of the
    size-class boundary with a gap (a stated size is never ambiguous)."""
    cfg = load_config("config/config.yaml")
    sizes = [p.findings.nodule_mm for p in demo_plan(cfg.data.ct, cfg.demo.ct, cfg.seed)]
    small = [s for s in sizes if 0 < s < LARGE_NODULE_MM]
    large = [s for s in sizes if s >= LARGE_NODULE_MM]
    assert small and large and len(small) + len(large) + sizes.count(0) == len(sizes)
    assert all(SMALL_NODULE_RANGE_MM[0] <= s < SMALL_NODULE_RANGE_MM[1] for s in small)
    assert all(LARGE_NODULE_RANGE_MM[0] <= s < LARGE_NODULE_RANGE_MM[1] for s in large)
    assert SMALL_NODULE_RANGE_MM[1] <= LARGE_NODULE_MM <= LARGE_NODULE_RANGE_MM[0]
    assert nodule_size_class(SMALL_NODULE_RANGE_MM[1] - 1) == "small"
    assert nodule_size_class(LARGE_NODULE_RANGE_MM[0]) == "large"


def _nodule_voxels(findings: DemoFindings, seed: int) -> np.ndarray:
    """Voxels that differ from the same phantom without the nodule (same noise)."""
    with_nodule, _ = phantom(SHAPE, SPACING, findings, REGIONS, 0.0, np.random.default_rng(seed))
    without, _ = phantom(SHAPE, SPACING, DemoFindings(0, findings.nodule_side, findings.cardiomegaly,
                                                      findings.effusion), REGIONS, 0.0, np.random.default_rng(seed))
    return np.argwhere(with_nodule != without)


def test_nodule_is_dense_sized_and_near_mid_lung_on_its_side():
    """The nodule is drawn at NODULE_HU, with about its stated diameter, in the stated lung,
    within NODULE_SPREAD_MM (plus the lung's jitter) of the same place in every study."""
    centres = []
    for seed in range(4):
        findings = DemoFindings(nodule_mm=24, nodule_side="left", cardiomegaly=False, effusion="none")
        voxels = _nodule_voxels(findings, seed)
        hu, _ = phantom(SHAPE, SPACING, findings, REGIONS, 0.0, np.random.default_rng(seed))
        assert np.allclose(hu[tuple(voxels.T)], NODULE_HU)
        extent_mm = (voxels.max(0) - voxels.min(0) + 1) * np.asarray(SPACING)
        assert np.all(np.abs(extent_mm - 24) <= 2 * np.asarray(SPACING))
        centre_mm = (voxels.mean(0) - (np.asarray(SHAPE) - 1) / 2) * np.asarray(SPACING)
        assert centre_mm[0] < 0  # RAS: the left lung is at negative x
        centres.append(centre_mm)
    spread = np.ptp(np.stack(centres), axis=0)
    assert np.all(spread <= 2 * NODULE_SPREAD_MM + 2 * 3 * 4.0 + np.asarray(SPACING))  # offsets, lung jitter, voxels
