"""Watching a training run while it runs (the shared loop and Reg2RG alike).

Every ``monitor.log_every`` optimizer steps, and at the last step, the main process

* logs one progress line through Python logging (a rule's log, see
  :func:`strata.logging_setup.snakemake_logging`), e.g.
  ``hiera3d/pose step 120/300 (40%) loss 0.4123 lr 0.00152 grad_norm 0.531 410.2 samples/s ETA 0:00:44``;
* rewrites ``<run dir>/live_log.parquet`` atomically, one row per logged step: that
  step's scalars (loss terms, ``lr``, ``grad_norm``), ``samples_per_s`` over the last
  interval and ``wall_time`` (Unix seconds). It is not a Snakemake output, so it can be
  read during the run and Snakemake never deletes it; a resumed run keeps its rows up to
  the resume step, a run from step 0 starts it anew;
* with ``monitor.tensorboard``, writes the same scalars as ``train/<name>`` to TensorBoard
  event files in ``<run dir>/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``;
  a resumed run purges the events after its resume step, a run from step 0 removes the
  folder first).

Timings live only here: the final ``train_log.parquet`` (every step) stays deterministic.
"""

from __future__ import annotations

import datetime
import logging
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from strata.config import from_dict
from strata.io.atomic import write_parquet
from strata.training.config import MonitorConfig

log = logging.getLogger(__name__)

LIVE_LOG = "live_log.parquet"
TENSORBOARD = "tensorboard"


def workflow_monitor(config: Mapping[str, Any]) -> MonitorConfig:
    """The ``monitor`` section of the workflow config. Entry points read it there, never
    from rule params: logging does not change results, so editing it must not re-run training."""
    return from_dict(MonitorConfig, dict(config.get("monitor") or {}), where="monitor")


def progress_line(name: str, step: int, total: int, scalars: Mapping[str, float], samples_per_s: float,
                  eta_s: float) -> str:
    """``<name> step <step>/<total> (<pct>%) loss .. lr .. grad_norm .. <rate> samples/s ETA h:mm:ss``."""
    parts = [f"{name} step {step}/{total} ({100 * step / total:.0f}%)"]
    parts += [f"{key} {scalars[key]:.4g}" for key in ("loss", "lr", "grad_norm")
              if key in scalars and not math.isnan(scalars[key])]
    parts.append(f"{samples_per_s:.3g} samples/s ETA {datetime.timedelta(seconds=round(eta_s))}")
    return " ".join(parts)


class StepMonitor:
    """Progress lines, the live step log and TensorBoard scalars of one run.

    Args:
        cfg: cadence and TensorBoard switch.
        run_dir: the run's folder (``results/<family>/<run>``).
        name: the run in progress lines (``hiera3d/pose``).
        total_steps: optimizer steps of the whole run.
        start_step: steps already done (a resumed run), 0 otherwise.
        samples_per_step: samples of one optimizer step over all processes.
        enabled: False in every process but the main one (then nothing is written).
    """

    def __init__(self, cfg: MonitorConfig, run_dir: Path, name: str, total_steps: int, start_step: int,
                 samples_per_step: int, enabled: bool = True) -> None:
        self.cfg, self.name, self.total, self.samples_per_step = cfg, name, total_steps, samples_per_step
        self.enabled = enabled
        self.path = Path(run_dir) / LIVE_LOG
        self.rows = self._kept_rows(start_step) if enabled else []
        self.writer = self._writer(Path(run_dir) / TENSORBOARD, start_step) if enabled and cfg.tensorboard else None
        self.last_step, self.last_time = start_step, time.perf_counter()

    def _kept_rows(self, start_step: int) -> list[dict[str, Any]]:
        if start_step == 0 or not self.path.is_file():
            return []
        frame = pd.read_parquet(self.path)
        return frame[frame["step"] <= start_step].to_dict("records")

    @staticmethod
    def _writer(folder: Path, start_step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        if start_step == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is logged."""
        return self.enabled and (step % self.cfg.log_every == 0 or step == self.total)

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record the scalars of optimizer step ``step`` (1-based) if it is due."""
        if not self.due(step):
            return
        now = time.perf_counter()
        elapsed, done = max(now - self.last_time, 1e-9), max(step - self.last_step, 1)
        rate, eta = self.samples_per_step * done / elapsed, (self.total - step) * elapsed / done
        self.last_step, self.last_time = step, now
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}, "samples_per_s": rate,
               "wall_time": time.time()}
        self.rows.append(row)
        write_parquet(pd.DataFrame(self.rows), self.path)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "wall_time"):
                    self.writer.add_scalar(f"train/{key}", value, step, walltime=row["wall_time"])
            self.writer.flush()
        log.info(progress_line(self.name, step, self.total, scalars, rate, eta))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
