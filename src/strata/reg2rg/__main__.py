"""Command line for training outside Snakemake, e.g. several processes under ``torchrun``::

    DS_ACCELERATOR=cpu torchrun --nproc_per_node=2 -m strata.reg2rg --config config/config.yaml \\
        --tokenizer results/reg2rg/tokenizer --reports results/cache/ct/reports.parquet \\
        --tokens results/reg2rg/tokens --out results/reg2rg/demo --deepspeed config/deepspeed/zero2.json

``--config`` is a YAML file with a top-level ``reg2rg:`` section (and ``seed:``) and
optionally ``studies:``, the study ids to train on (default: every file in ``--tokens``;
the rule lists its training studies, so held-out ones are never trained on), and
``monitor:`` (progress lines / live step log / TensorBoard; default ``log_every: 10``).
``--gpus`` is what the job asks for (default ``reg2rg.gpus``). Progress goes to stderr
through Python logging; the last line on stdout is ``{"losses": [...]}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch
import yaml

from strata.config import from_dict
from strata.reg2rg.config import Reg2RGConfig
from strata.reg2rg.train import Reg2RGInputs, train_reg2rg
from strata.training.config import MonitorConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m strata.reg2rg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="token cache folder (<study>.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="run folder results/reg2rg/<run>")
    parser.add_argument("--deepspeed", type=Path, default=None, help="overrides reg2rg.deepspeed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs asked for (default: reg2rg.gpus)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw = yaml.safe_load(args.config.read_text())
    cfg = from_dict(Reg2RGConfig, raw["reg2rg"], where=f"{args.config}:reg2rg")
    if args.deepspeed is not None:
        cfg = dataclasses.replace(cfg, deepspeed=args.deepspeed)
    torch.set_num_threads(args.threads)
    studies = tuple(raw["studies"]) if raw.get("studies") is not None else \
        tuple(sorted(p.name.removesuffix(".safetensors") for p in args.tokens.glob("*.safetensors")))
    monitor = from_dict(MonitorConfig, raw.get("monitor") or {}, where=f"{args.config}:monitor")
    frame = train_reg2rg(cfg, int(raw["seed"]), Reg2RGInputs(args.tokenizer, args.reports, args.tokens, studies),
                         args.out, gpus=args.gpus, monitor=monitor)
    print(json.dumps({"losses": frame["loss"].tolist()}))


if __name__ == "__main__":
    main()
