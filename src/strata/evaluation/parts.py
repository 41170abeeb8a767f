"""Resumable chunked parquet output: one part file per chunk, merged at the end.

A generate job processes its samples in chunks and writes each chunk's rows to
``<work>/part-<index>.parquet`` (atomically). The work directory is *not* a declared
Snakemake output, so a killed job's parts survive the re-run, which skips every chunk
already written. ``<work>/FINGERPRINT`` holds a hash of the checkpoint weights and the
generation settings; parts of another fingerprint are discarded. The merged file is
written atomically and the work directory removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from strata.io.atomic import atomic_path, write_parquet


class ChunkedParquet:
    """Part files of one output, keyed by chunk index.

    Args:
        work_dir: where the parts live until the merge.
        fingerprint: identity of what produces the rows (weights + settings).
    """

    def __init__(self, work_dir: Path, fingerprint: str) -> None:
        self.work_dir = Path(work_dir)
        stamp = self.work_dir / "FINGERPRINT"
        if stamp.is_file() and stamp.read_text() != fingerprint:
            shutil.rmtree(self.work_dir)  # another checkpoint or settings: never mix rows
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            with atomic_path(stamp) as tmp:
                tmp.write_text(fingerprint)

    def written(self) -> int:
        """Part files already present (from an earlier, killed attempt)."""
        return len(list(self.work_dir.glob("part-*.parquet")))

    def part(self, index: int) -> Path:
        return self.work_dir / f"part-{index:06d}.parquet"

    def run(self, index: int, compute: Callable[[], pd.DataFrame]) -> bool:
        """Write chunk ``index`` unless it exists; True when it was computed now."""
        if self.part(index).is_file():
            return False
        write_parquet(compute(), self.part(index))
        return True

    def merge(self, count: int, out: Path) -> pd.DataFrame:
        """Concatenate parts ``0..count-1`` in order into ``out`` and drop the work dir."""
        missing = [self.part(i) for i in range(count) if not self.part(i).is_file()]
        if missing:
            raise FileNotFoundError(f"missing part files: {', '.join(map(str, missing[:3]))}")
        frame = pd.concat([pd.read_parquet(self.part(i)) for i in range(count)], ignore_index=True)
        write_parquet(frame, out)
        shutil.rmtree(self.work_dir)
        return frame
