"""Training throughput of a model family at its full config (docs/design.md §8).

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

For ``--model posevae``: the VAE's training step (encode, reparameterised sample, decode,
masked reconstruction + KL) at ``models.posevae.pose.architecture`` of ``config/full.yaml``
on ``--frames`` frames (default 400) with ~2 % missing keypoints, and the encoder alone;
the explicit path is the one that returns attention maps (``return_attention=True``).

New families plug in with :func:`register` (a builder returning a :class:`Workload`).

With ``--reference DIR`` (a local clone of amathislab/BehaveMAE) the reference
``HBehaveMAE`` training step at the same config is timed in the same alternating rounds
(docs/design.md §8: ours must not be slower).

Run (from the repository root)::

    .venv/bin/python bench/train_throughput.py --model hiera3d [--batch 8] [--reference /tmp/BehaveMAE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    reference: dict[str, Callable[[], None]] = field(default_factory=dict)  # case -> reference code's step


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

    reference = {}
    if args.reference:
        reference["training step (masked MAE)"] = reference_hbehavemae_step(args.reference, config, x)
    return Workload(
        description=(f"Hiera3DMAE, full pose config: input [{args.batch}, 1, 400, 1, 72], "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                     f"mask ratio {config.mask_ratio:.2f} ({config.num_kept} of {config.num_units} units kept)"),
        batch=args.batch,
        steps={"training step (masked MAE)": (mae_step(False), mae_step(True)),
               "unmasked encoder": (encoder_step(False), encoder_step(True))},
        reference=reference)


def reference_hbehavemae_step(checkout: Path, config: Any, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of the reference ``HBehaveMAE`` (amathislab/BehaveMAE) at ``config``.

    ``checkout`` is a local clone of the reference repository; its model code is imported
    from there, never copied. The model is built with the Shot7M2 arguments of its
    ``scripts/shot7m2/train_hBehaveMAE.sh`` (the defaults of ``main_pretrain.py`` otherwise:
    separate position embeddings, fp32), i.e. the same architecture as ``config``.
    """
    import sys
    import types

    try:
        import timm.models.layers  # noqa: F401  the reference imports DropPath and Mlp from timm
    except ImportError:
        # timm needs torchvision, which has no wheel for this CPU torch here. The reference
        # uses timm's Mlp (fc1 -> act -> fc2, dropout 0) and DropPath (rate 0: identity), so
        # stand-ins with the same computation keep its timing honest.
        class Mlp(torch.nn.Module):
            def __init__(self, in_features: int, hidden_features: int, act_layer: type = torch.nn.GELU,
                         out_features: int | None = None) -> None:
                super().__init__()
                self.fc1 = torch.nn.Linear(in_features, hidden_features)
                self.act = act_layer()
                self.fc2 = torch.nn.Linear(hidden_features, out_features or in_features)

            def forward(self, h: torch.Tensor) -> torch.Tensor:
                return self.fc2(self.act(self.fc1(h)))

        layers = types.ModuleType("timm.models.layers")
        layers.Mlp = Mlp
        layers.DropPath = lambda rate: torch.nn.Identity()
        for name in ("timm", "timm.models"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["timm.models.layers"] = layers
    sys.path.insert(0, str(checkout))
    from models.hbehave_mae import HBehaveMAE  # the reference's package "models"

    torch.manual_seed(0)
    reference = HBehaveMAE(
        in_chans=config.in_channels, embed_dim=config.embed_dim, num_heads=config.num_heads,
        patch_kernel=config.patch_size, patch_stride=config.patch_size, patch_padding=(0, 0, 0),
        input_size=config.input_size, stages=config.stages, q_strides=config.q_strides,
        mask_unit_attn=config.mask_unit_attn, out_embed_dims=config.out_embed_dims,
        mlp_ratio=config.mlp_ratio, decoding_strategy="single", decoder_embed_dim=config.decoder_embed_dim,
        decoder_depth=config.decoder_depth, decoder_num_heads=config.decoder_num_heads,
        norm_loss=config.norm_pix_loss, sep_pos_embed=True).train()
    samples = x[:, 0]  # the reference adds the channel axis itself: [B, T, H, W]
    unused = sum(p.numel() for p in reference.multi_scale_fusion_heads.parameters())
    print(f"reference HBehaveMAE from {checkout}: {sum(p.numel() for p in reference.parameters()) / 1e6:.2f} M "
          f"parameters, of which {unused / 1e6:.2f} M in multi-scale fusion heads unused by 'single' decoding")

    def run() -> None:
        reference.zero_grad(set_to_none=True)
        loss = reference(samples, mask_ratio=config.mask_ratio)[0]
        loss.backward()
    return run


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


@register("posevae")
def posevae(args: argparse.Namespace) -> Workload:
    from strata.config import read_yaml
    from strata.models.registry import build_model

    raw = read_yaml(REPO / "config" / "full.yaml")["models"]["posevae"]["pose"]["architecture"]
    torch.manual_seed(0)
    model = build_model("posevae", raw, where="models.posevae.pose.architecture").train()
    frames = args.frames or 400
    x = torch.randn(args.batch, frames, 1, model.config.features)
    valid = torch.rand(x.shape) > 0.02  # a few missing keypoints, as in MABe22

    def vae_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # same reparameterisation noise and dropout on both paths
            out = model(x, valid, return_attention=explicit)
            loss, _ = model.forward_loss(x, valid, None, out)
            loss.backward()
        return run

    def encoder_step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            post = model.encode(x, valid, return_attention=explicit)
            (post.mu.pow(2).mean() + post.logvar.pow(2).mean()).backward()
        return run

    c = model.config
    return Workload(
        description=(f"PoseVAE, full pose config: input [{args.batch}, {frames}, 1, {c.features}], chunk "
                     f"{c.chunk_len} ({-(-frames // c.chunk_len)} chunks), widths {c.local_dim}/{c.global_dim}, depths "
                     f"{c.local_depth}+{c.global_depth}+{c.decoder_global_depth}+{c.decoder_local_depth}, "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"),
        batch=args.batch,
        steps={"training step (encode, sample, decode, masked loss + KL)": (vae_step(False), vae_step(True)),
               "encoder only": (encoder_step(False), encoder_step(True))})


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


def time_paths(paths: dict[str, Callable[[], None]], rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per step of each named path, timed in alternating rounds."""
    for step in paths.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, step in paths.items():
            for _ in range(iters):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per case")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per path per round")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the square peak-FLOP/s matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="hiera3d only: a local clone of amathislab/BehaveMAE to time its HBehaveMAE too")
    parser.add_argument("--frames", type=int, default=None,
                        help="posevae only: frames per sequence (default 400, the full config's window)")
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
        paths = {"fused": fused, "explicit": explicit}
        if case in workload.reference:
            paths["reference"] = workload.reference[case]
        times = time_paths(paths, args.rounds, args.iters)
        t_fused, t_explicit = times["fused"], times["explicit"]
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
        if "reference" in times:
            rate_reference = workload.batch / times["reference"]
            print(f"  reference code:  {rate_reference:8.2f} samples/s ({times['reference'] * 1e3:.0f} ms/step)")
            print(f"  ours (fused) / reference: {rate_fused / rate_reference:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
