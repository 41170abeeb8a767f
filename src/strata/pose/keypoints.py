"""Names shared by every pose module: MABe22 mouse keypoints and the demo's behaviours."""

from __future__ import annotations

# MABe22 mouse-triplet keypoint order (index = position in the keypoint axis).
KEYPOINTS: tuple[str, ...] = (
    "nose",
    "ear_left",
    "ear_right",
    "neck",
    "forepaw_left",
    "forepaw_right",
    "center",
    "hindpaw_left",
    "hindpaw_right",
    "tail_base",
    "tail_middle",
    "tail_tip",
)
N_KEYPOINTS: int = len(KEYPOINTS)
KEYPOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(KEYPOINTS)}

# Per-frame behaviour labels of the synthetic demo (value = position in this tuple): the
# triplet's action, constant over segments of 30-120 frames (strata.pose.demo).
BEHAVIOURS: tuple[str, ...] = ("rest", "explore", "chase", "huddle", "groom")
BEHAVIOUR_TASK: str = "behaviour"  # the demo's single entry in the MABe22 "vocabulary"
UNKNOWN_LABEL: int = -1
