"""Pose tracks (MABe22 mouse triplets): demo data, safe readers, windowing, the stage."""

from strata.pose.errors import PoseFormatError
from strata.pose.keypoints import BEHAVIOURS, KEYPOINTS

__all__ = ["BEHAVIOURS", "KEYPOINTS", "PoseFormatError"]
