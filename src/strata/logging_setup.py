"""Send a Snakemake ``script:``'s logging to its ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def snakemake_logging(log_file: str | Path, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Log to ``log_file`` (truncated) for the duration of the block.

    Warnings are routed through logging too; an exception escaping the block is logged
    with its traceback (so the rule's log shows why it failed) and then re-raised.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    logger = logging.getLogger("strata.workflow")
    try:
        yield logger
    except BaseException:
        logger.exception("failed")
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
