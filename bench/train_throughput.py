"""Training throughput of a model family at its full config (SPEC section 8).

Targets (hierarchical ViT-3D row): forward + backward samples/s at 400 x 1 x 72 is at
least 1.3x that of the same model on the explicit (non-fused) attention path; achieved
FLOP/s at least 40 % of the machine's practical limit (a large fp32 matmul measured in
the same run).

What is measured, for ``--model hiera3d``
    * the training step of :class:`strata.models.hiera3d.Hiera3DMAE` at the
      ``models.hiera3d.pose.architecture`` of ``config/full.yaml`` (mask ratio 0.70: the
      encoder sees 15 of 50 mask units), batch ``--batch``, one fixed mask, forward +
      backward (no optimizer step), fused SDPA against the explicit softmax path;
    * the same for the unmasked encoder (``forward_features``, all 4800 tokens), where
      attention is a larger share of the work;
    * FLOPs per sample counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
      forward + backward of the explicit path (every attention matmul is an ``aten.bmm``
      there; the counter may not know the CPU fused kernel) and of the fused path;
    * the practical fp32 peak: FLOP/s of a ``--matmul``-sized square matmul.

Timed passes alternate between the two attention paths (``--rounds`` rounds of
``--iters`` steps each, after one warm-up step per path), and the median step time of
each path is reported, so drift in machine load hits both alike.

New families plug in with :func:`register` (a builder returning a :class:`Workload`);
``--model hjepa`` and ``--model posevae`` will be added that way.

Run (from the repository root)::

    .venv/bin/python bench/train_throughput.py --model hiera3d [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Workload:
    """One model's forward + backward on both attention paths.

    ``steps`` maps a case name (e.g. ``training step``) to a pair of zero-argument
    callables (fused, explicit), each running one forward + backward of ``batch`` samples.
    """

    description: str
    batch: int
    steps: dict[str, tuple[Callable[[], None], Callable[[], None]]]


BUILDERS: dict[str, Callable[[argparse.Namespace], Workload]] = {}


def register(name: str) -> Callable[[Callable[[argparse.Namespace], Workload]], Callable[[argparse.Namespace], Workload]]:
    """Register a workload builder under ``--model name``."""
    def decorate(builder: Callable[[argparse.Namespace], Workload]) -> Callable[[argparse.Namespace], Workload]:
        BUILDERS[name] = builder
        return builder
    return decorate


@register("hiera3d")
def hiera3d(args: argparse.Namespace) -> Workload:
    from strata.config import from_dict, read_yaml
    from strata.models.hiera3d import Hiera3DConfig, Hiera3DMAE

    raw = read_yaml(REPO / "config" / "full.yaml")["models"]["hiera3d"]["pose"]["architecture"]
    config = from_dict(Hiera3DConfig, raw, where="models.hiera3d.pose.architecture")
    torch.manual_seed(0)
    model = Hiera3DMAE(config).train()
    x = torch.randn(args.batch, config.in_channels, *config.input_size)
    mask = model.random_masking(args.batch, generator=torch.Generator().manual_seed(0))

    def mae_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss, _, _ = model(x, mask, explicit_attention=explicit)
            loss.backward()
        return run

    def encoder_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            stages, _ = model.encoder(x, return_attention=explicit)
            sum(s.float().pow(2).mean() for s in stages).backward()
        return run

    return Workload(
        description=(f"Hiera3DMAE, full pose config: input [{args.batch}, 1, 400, 1, 72], "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                     f"mask ratio {config.mask_ratio:.2f} ({config.num_kept} of {config.num_units} units kept)"),
        batch=args.batch,
        steps={"training step (masked MAE)": (mae_step(False), mae_step(True)),
               "unmasked encoder": (encoder_step(False), encoder_step(True))})


@register("hjepa")
def hjepa(args: argparse.Namespace) -> Workload:
    from strata.config import from_dict, read_yaml
    from strata.models.hjepa import HJEPA, HJEPAConfig

    raw = read_yaml(REPO / "config" / "full.yaml")["models"]["hjepa"]["ct"]["architecture"]
    if args.input_size:  # the full 3 x 256 x 256 x 64 volume does not fit 24 GiB with explicit attention
        raw = {**raw, "input_size": list(args.input_size)}
    config = from_dict(HJEPAConfig, raw, where="models.hjepa.ct.architecture")
    torch.manual_seed(0)
    model = HJEPA(config).train()
    x = torch.randn(args.batch, config.in_channels, *config.input_size)
    masks = model.sample_masks(args.batch, generator=torch.Generator().manual_seed(0))

    def jepa_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(x, masks, explicit_attention=explicit).loss.backward()
        return run

    def encoder_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model.encoder(x, explicit_attention=explicit).float().pow(2).mean().backward()
        return run

    context = int(masks.context.sum(dim=1).float().mean())
    return Workload(
        description=(f"HJEPA, full CT config{' (input size overridden)' if args.input_size else ''}: input [{args.batch}, {config.in_channels}, "
                     f"{', '.join(map(str, config.input_size))}], {config.num_tokens} tokens, "
                     f"{sum(p.numel() for p in model.trainable_parameters()) / 1e6:.2f} M trainable parameters "
                     f"(+ EMA target encoder), {config.num_target_blocks} target blocks, "
                     f"~{context} context tokens per sample"),
        batch=args.batch,
        steps={"training step (H-JEPA: target encoder, context encoder, predictor, hierarchy)":
               (jepa_step(False), jepa_step(True)),
               "unmasked context encoder": (encoder_step(False), encoder_step(True))})


def flops_of(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_flops_per_second(n: int, seconds: float) -> float:
    """fp32 FLOP/s of an n x n matmul, repeated for about ``seconds`` (after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def time_paths(fused: Callable[[], None], explicit: Callable[[], None], rounds: int, iters: int
               ) -> tuple[float, float]:
    """Median seconds per step of each path, timed in alternating rounds."""
    fused()
    explicit()
    times: dict[str, list[float]] = {"fused": [], "explicit": []}
    for _ in range(rounds):
        for name, step in (("fused", fused), ("explicit", explicit)):
            for _ in range(iters):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["fused"]), statistics.median(times["explicit"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per case")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per path per round")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the square peak-FLOP/s matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("H", "W", "D"),
                        help="hjepa only: override the full config's CT input size (memory-bound machines)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    workload = BUILDERS[args.model](args)
    peak = matmul_flops_per_second(args.matmul, 3.0)
    print(workload.description)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 {args.matmul}x{args.matmul} matmul: {peak / 1e9:.1f} GFLOP/s (practical peak)")
    for case, (fused, explicit) in workload.steps.items():
        flops_explicit = flops_of(explicit) / workload.batch
        flops_fused = flops_of(fused) / workload.batch
        t_fused, t_explicit = time_paths(fused, explicit, args.rounds, args.iters)
        rate_fused, rate_explicit = workload.batch / t_fused, workload.batch / t_explicit
        achieved = flops_explicit * rate_fused
        print(f"\n[{case}] forward + backward, batch {workload.batch}")
        print(f"  FLOPs per sample (FlopCounterMode): {flops_explicit / 1e9:.2f} GFLOP "
              f"(fused path counts {flops_fused / 1e9:.2f} GFLOP)")
        print(f"  fused SDPA:      {rate_fused:8.2f} samples/s ({t_fused * 1e3:.0f} ms/step)")
        print(f"  explicit softmax:{rate_explicit:8.2f} samples/s ({t_explicit * 1e3:.0f} ms/step)")
        print(f"  fused / explicit: {rate_fused / rate_explicit:.2f}x (target >= 1.3x)")
        print(f"  achieved (fused): {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the matmul peak "
              f"(target >= 40 %)")


if __name__ == "__main__":
    main()
