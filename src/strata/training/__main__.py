"""Train one model run outside Snakemake (same code path as the ``train_<family>`` rules).

    python -m strata.training --config config/config.yaml --family hiera3d --run pose

Reads the cached features under ``--cache`` (default ``results/cache``) and writes to
``--out`` (default ``results/<family>/<run>``); re-running after an interruption resumes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from strata.config import load_config
from strata.training.run import train_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--family", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    try:
        run_cfg = cfg.models[args.family][args.run]
    except KeyError:
        parser.error(f"{args.config}: no run models.{args.family}.{args.run}")
    out = args.out or Path("results") / args.family / args.run
    train_run(args.family, args.run, run_cfg, cfg.seed, args.cache, out)


if __name__ == "__main__":
    main()
