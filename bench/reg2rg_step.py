"""Reg2RG training steps/s with the token cache vs recomputing the frozen ViT every step.

docs/design.md §8 target: >= 5x steps/s with the token cache at the tiny config, against the
original design (global volume + 10 region crops through the frozen ViT-3D, and every
region mask through the mask encoder, in every step).

Both arms run the same training step (forward, backward, AdamW step on the trainable
parameters; batch 1; the demo ``reg2rg`` section of ``config/config.yaml`` unless
``--encoder published``) on the same studies and token sequences; the only difference is
where the visual tokens come from:

* ``cache``: ViT-3D and mask-encoder outputs read from the token cache
  (:mod:`strata.reg2rg.token_cache`; built once before timing, its cost is printed too);
* ``recompute``: the cached CT tensors, encoded by the frozen encoders in every step.

``--encoder published`` swaps in the published encoder architecture (ViT-3D 768 wide,
12 blocks, 8 x 64 heads, MLP 2048; mask encoder 255 wide, 3 blocks) keeping the tiny LLM;
``--volume full`` feeds it volumes and region crops of the published size
(3 x 256 x 256 x 64: 1,024 tokens per pass; random intensities) instead of the demo's
(64 x 64 x 32 volume: 32 tokens, 32 x 32 x 16 crops: 4 tokens), where the frozen passes
are a realistic share of the step. The frozen ViT is randomly initialised (seeded) in
every variant: no weights are read.

Inputs: ``results/cache/ct/studies/*.safetensors`` and ``results/cache/ct/reports.parquet``
when they exist (``make demo``), else random CT tensors of the demo shapes with the demo's
report sentences. Steps alternate between the arms in ``--rounds`` rounds so machine load
drift hits both alike; the median step time per arm is reported.

Run (from the repository root)::

    .venv/bin/python bench/reg2rg_step.py [--encoder demo|published] [--volume demo|full] [--rounds 3 --steps 4]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from strata.config import from_dict
from strata.ct.demo_plan import DemoFindings, region_sentences
from strata.ct.regions import REGIONS
from strata.io.tensor_files import save_tensors
from strata.models.reg2rg import build_encoders, build_reg2rg
from strata.reg2rg.config import Reg2RGConfig
from strata.reg2rg.dataset import (
    Reg2RGCollator,
    Reg2RGDataset,
    TokenCacheSource,
    VolumeSource,
    study_sentences,
)
from strata.reg2rg.token_cache import module_sha256, run_token_cache
from strata.reg2rg.tokenizer import build_tokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_VIT = {"patch_size": [32, 32, 4], "dim": 768, "depth": 12, "heads": 8, "head_dim": 64, "mlp_dim": 2048}
PUBLISHED_MASK = {"patch_size": [32, 32, 4], "dim": 255, "depth": 3, "heads": 8, "head_dim": 64, "mlp_dim": 512}


def fake_ct(root: Path, n: int, full: bool = False) -> tuple[Path, Path]:
    """Random CT tensors (demo or published shapes) with demo sentences."""
    rng, rows = np.random.default_rng(0), []
    c, volume, crop = (3, (256, 256, 64), (256, 256, 64)) if full else (1, (64, 64, 32), (32, 32, 16))
    for i in range(n):
        sid = f"bench_{i}"
        save_tensors({"image": torch.from_numpy(rng.random((c, *volume), dtype=np.float32)),
                      "region_images": torch.from_numpy(rng.random((10, c, *crop), dtype=np.float32)),
                      "region_masks": torch.from_numpy(rng.random((10, *crop)) > 0.5).to(torch.uint8),
                      "region_present": torch.ones(10, dtype=torch.uint8)}, root / "studies" / f"{sid}.safetensors")
        f = DemoFindings(nodule_mm=(0, 12, 24)[i % 3], nodule_side="left", cardiomegaly=bool(i % 2), effusion="none")
        rows += [{"study_id": sid, "region": r, "sentence": s} for r, s in region_sentences(f, REGIONS).items()]
    pd.DataFrame(rows).to_parquet(root / "reports.parquet", index=False)
    return root / "studies", root / "reports.parquet"


def config(encoder: str, volume: str) -> Reg2RGConfig:
    raw = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["reg2rg"])
    if encoder == "published":
        raw["encoder"]["vit"].update(PUBLISHED_VIT, pos_grid=[2, 2, 8])
        raw["encoder"]["mask"].update(PUBLISHED_MASK, pos_grid=[1, 1, 4])
    if volume == "full":
        raw["encoder"]["vit"].update(in_channels=3, pos_grid=[16, 16, 128])
        raw["encoder"]["mask"].update(patch_size=[32, 32, 16], pos_grid=[8, 8, 4])
    return from_dict(Reg2RGConfig, raw, where="reg2rg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=["demo", "published"], default="demo")
    parser.add_argument("--volume", choices=["demo", "full"], default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, seed = config(args.encoder, args.volume), 1234
    tmp = Path(tempfile.mkdtemp(prefix="reg2rg_bench_"))
    studies, reports = REPO / "results/cache/ct/studies", REPO / "results/cache/ct/reports.parquet"
    if args.volume == "full":
        studies, reports = fake_ct(tmp, 2, full=True)
    elif not (studies.is_dir() and reports.is_file()):
        studies, reports = fake_ct(tmp, 6)
    table = pd.read_parquet(reports)
    ids = sorted(p.stem for p in studies.glob("*.safetensors"))[:6]
    build_tokenizer(cfg.tokenizer, table, cfg.perceiver.num_latents, tmp / "tokenizer")
    tokenizer, layout = load_tokenizer(tmp / "tokenizer", cfg.perceiver.num_latents)

    encoders = build_encoders(cfg.encoder, seed)
    start = time.perf_counter()
    sha = module_sha256(encoders)
    for sid in ids:
        run_token_cache(encoders, sha, studies / f"{sid}.safetensors", tmp / "tokens" / f"{sid}.safetensors",
                        torch.float32)
    cache_seconds = time.perf_counter() - start

    sentences = study_sentences(table)
    arms = {}
    for name, source, with_encoders in (("cache", TokenCacheSource(tmp / "tokens"), False),
                                        ("recompute", VolumeSource(studies), True)):
        ds = Reg2RGDataset(study_ids=ids, sentences=sentences, source=source, tokenizer=tokenizer, layout=layout,
                           cfg=cfg.data, seed=seed, train=True)
        model = build_reg2rg(cfg, layout, seed, with_encoders=with_encoders).train()
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        arms[name] = (ds, model, optim, [])
    collator = Reg2RGCollator(tokenizer.pad_token_id)

    def step(name: str, i: int) -> float:
        ds, model, optim, _ = arms[name]
        t0 = time.perf_counter()
        batch = collator([ds[i % len(ds)]])
        loss = model(**batch)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in arms:  # warm-up
        step(name, 0)
    for r in range(args.rounds):
        for name in arms:
            arms[name][3].extend(step(name, r * args.steps + i) for i in range(args.steps))
    median = {name: statistics.median(arm[3]) for name, arm in arms.items()}
    vit_params = sum(p.numel() for p in encoders.vit.parameters())
    print(f"encoder: {args.encoder}, volumes: {args.volume} (ViT-3D {vit_params / 1e6:.2f} M parameters, dim {cfg.encoder.vit.dim}, "
          f"depth {cfg.encoder.vit.depth}); LLM hidden {cfg.llm.tiny.hidden_size} x {cfg.llm.tiny.num_layers} layers")
    print(f"token cache built once: {len(ids)} studies in {cache_seconds:.2f} s")
    for name in arms:
        print(f"{name:>9}: {1 / median[name]:.2f} steps/s (median step {median[name] * 1000:.0f} ms, "
              f"{len(arms[name][3])} steps)")
    print(f"ratio cache / recompute: {median['recompute'] / median['cache']:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
