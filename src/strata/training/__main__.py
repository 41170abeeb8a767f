"""Train one model run outside Snakemake (same code path as the ``train_<family>`` rules).

    python -m strata.training --config config/config.yaml --family hiera3d --run pose
    python -m strata.training --config config/config.yaml --family hiera3d --run pose --nproc 2

Reads the cached features under ``--cache`` (default ``results/cache``) and writes to
``--out`` (default ``results/<family>/<run>``); re-running after an interruption resumes.
``--nproc N`` (N > 1) re-launches this command under ``torchrun`` with N DDP processes
(one per GPU; gloo on the CPU). ``--gpus N`` is the GPUs the job asks for (default the
run's ``train.gpus``; 0 = CPU; fewer visible GPUs stop the run unless ``train.allow_cpu``).
``--run-config`` reads one run's section instead of a whole config: a YAML file
``{seed: .., run_config: <models.<family>.<run>>, monitor: <monitor>}`` (what the
Snakemake rule writes before a multi-GPU launch).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import yaml

from strata.config import ModelRunConfig, from_dict, load_config
from strata.training.config import MonitorConfig
from strata.training.distributed import launched_by_torchrun, run_torchrun


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=False)
    source.add_argument("--config", type=Path, default=None, help="a whole config (default config/config.yaml)")
    source.add_argument("--run-config", type=Path, default=None, help="one run's section and the seed")
    parser.add_argument("--family", required=True)
    parser.add_argument("--run", "--run-name", dest="run", required=True)
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each process")
    parser.add_argument("--nproc", type=int, default=1, help="DDP processes (> 1: launched with torchrun)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs asked for (default: the run's train.gpus)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.nproc > 1 and not launched_by_torchrun():
        run_torchrun(args.nproc, "strata.training", _forwarded(args))
        return
    from strata.training.run import train_run  # (heavy: not needed by the launching process)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = f"models.{args.family}.{args.run}"
    if args.run_config is not None:
        raw = yaml.safe_load(args.run_config.read_text())
        run_cfg = from_dict(ModelRunConfig, raw["run_config"], where=f"{args.run_config}:{where}")
        seed = int(raw["seed"])
        monitor = from_dict(MonitorConfig, raw.get("monitor") or {}, where=f"{args.run_config}:monitor")
    else:
        config = args.config or Path("config/config.yaml")
        cfg = load_config(config)
        try:
            run_cfg = cfg.models[args.family][args.run]
        except KeyError:
            parser.error(f"{config}: no run {where}")
        seed, monitor = cfg.seed, cfg.monitor
    out = args.out or Path("results") / args.family / args.run
    train_run(args.family, args.run, run_cfg, seed, args.cache, out, gpus=args.gpus, monitor=monitor)


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The arguments of each torchrun process. Spelled so torchrun's own parser cannot
    mistake them for abbreviations of its options (``--run`` would match ``--run-path``)."""
    forwarded = ["--family", args.family, "--run-name", args.run, "--cache", str(args.cache)]
    if args.config is not None:
        forwarded += ["--config", str(args.config)]
    if args.run_config is not None:
        forwarded += ["--run-config", str(args.run_config)]
    if args.out is not None:
        forwarded += ["--out", str(args.out)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.gpus is not None:
        forwarded += ["--gpus", str(args.gpus)]
    return forwarded


if __name__ == "__main__":
    main()
