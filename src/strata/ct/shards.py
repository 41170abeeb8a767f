"""Per-study stages batched into a fixed number of jobs ("shards").

One job per study would pay the interpreter, torch and MONAI start-up (about 8 s of CPU:
MONAI's import walks every one of its sub-packages) for about a second of work per demo
study, and would submit one cluster job per study (50,000 at RadGenome-ChestCT size). A
shard job processes its studies one after another instead. A study's shard is a stable hash
of its id (SHA-256, not Python's per-process salted ``hash``; crc32 is linear, so ids
that differ in one digit land in correlated shards), so adding a study never moves
another: only the new study's shard runs again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def shard_of(study_id: str, shards: int) -> int:
    """The shard (0 .. shards - 1) a study belongs to, the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(study_id.encode("utf-8")).digest()[:8], "big") % shards


def shard_name(index: int, shards: int) -> str:
    """Zero-padded shard index, so rule and log names sort in shard order."""
    return f"{index:0{len(str(max(shards - 1, 0)))}d}"


def shard_members(study_ids: Iterable[str], shards: int) -> dict[str, list[str]]:
    """Shard name -> its studies (sorted); shards without a study are left out."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    members: dict[int, list[str]] = {}
    for study_id in sorted(study_ids):
        members.setdefault(shard_of(study_id, shards), []).append(study_id)
    return {shard_name(i, shards): members[i] for i in sorted(members)}
