"""Pose VAE peak memory of one forward + backward against sequence length (docs/design.md §8).

Target: doubling T (1k -> 2k -> 4k -> 8k frames) costs at most 2.2x peak memory for the
chunked model. Baseline in the same run: the same model with ``chunk_len = T`` (one chunk,
i.e. full attention over frames), measured on

* the fused path (``scaled_dot_product_attention``; on CPU its flash kernel never
  materialises the T x T matrix, so even full attention is linear in memory, quadratic
  only in time), and
* the explicit path (``return_attention=True``: the softmax probabilities [B, heads, T, T]
  are materialised, as in a textbook transformer and in every rollout run): the ~4x per
  doubling of full attention. Only sizes up to ``--explicit-max-frames`` are run (8k
  frames need tens of GB).

How memory is measured on CPU: every (T, variant) runs in a fresh subprocess, so no
allocator cache or earlier peak carries over. The child first runs a tiny forward +
backward (loads oneDNN/OpenMP state, so one-time allocations are not charged to the
measurement), builds the model and the input, reads its current RSS (``VmRSS``) as the
baseline, runs one forward + backward, and reports ``ru_maxrss - baseline``: the peak of
resident memory the pass added (activations, saved tensors, gradients). glibc is told to
serve every allocation >= 64 KiB with its own ``mmap`` (``MALLOC_MMAP_THRESHOLD_``, which
also switches off the dynamic threshold), so freed tensors leave RSS at once and the peak
RSS tracks the peak of live tensor memory instead of heap fragmentation. A
``torch.profiler`` memory trace was the alternative; it records allocator events but not
the resulting peak, and adds its own bookkeeping memory, so RSS is the simpler and more
faithful measure here.

    .venv/bin/python bench/pose_vae_memory.py [--frames 1000 2000 4000 8000 --batch 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

VARIANTS = ("chunked", "full_fused", "full_explicit")


def bench_config(chunk_len: int):
    from strata.models.pose_vae import PoseVAEConfig

    return PoseVAEConfig(features=72, chunk_len=chunk_len, local_dim=128, global_dim=128, local_depth=2,
                         global_depth=2, decoder_global_depth=2, decoder_local_depth=2, local_heads=4,
                         global_heads=4, mlp_ratio=4.0, dropout=0.0, latent_dim=32, pooling="query",
                         beta=1e-3, kl_warmup_steps=0, free_bits=None)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(frames: int, variant: str, batch: int, threads: int, chunk_len: int) -> None:
    """One measurement; prints a JSON line."""
    import resource

    import torch

    from strata.models.pose_vae import PoseVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def pass_(model: PoseVAE, x: torch.Tensor, valid: torch.Tensor, explicit: bool) -> None:
        out = model(x, valid, return_attention=explicit)
        loss, _ = model.forward_loss(x, valid, None, out)
        loss.backward()

    warm = PoseVAE(bench_config(chunk_len)).train()
    for explicit in (False, True):
        pass_(warm, torch.randn(1, chunk_len, 1, 72), torch.ones(1, chunk_len, 1, 72, dtype=torch.uint8), explicit)
    del warm

    config = bench_config(chunk_len if variant == "chunked" else frames)
    model = PoseVAE(config).train()
    x = torch.randn(batch, frames, 1, 72)
    valid = torch.ones(batch, frames, 1, 72, dtype=torch.uint8)
    baseline = rss_mb()
    pass_(model, x, valid, explicit=variant == "full_explicit")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"frames": frames, "variant": variant, "baseline_mb": baseline, "peak_mb": peak - baseline}))


def measure(frames: int, variant: str, args: argparse.Namespace) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", "--frames", str(frames), "--variant", variant,
           "--batch", str(args.batch), "--threads", str(args.threads), "--chunk-len", str(args.chunk_len)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} at T={frames} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunk-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--explicit-max-frames", type=int, default=4000)
    parser.add_argument("--target", type=float, default=2.2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.frames[0], args.variant, args.batch, args.threads, args.chunk_len)
        return

    frames = sorted(args.frames)
    config = bench_config(args.chunk_len)
    print(f"pose VAE forward + backward, batch {args.batch}, F = 72, threads {args.threads}; "
          f"widths {config.local_dim}/{config.global_dim}, depths {config.local_depth}+{config.global_depth}"
          f"+{config.decoder_global_depth}+{config.decoder_local_depth}, {config.local_heads} heads")
    print("peak memory = ru_maxrss - RSS after model construction, fresh process per cell (MiB)\n")
    results: dict[str, dict[int, float]] = {v: {} for v in VARIANTS}
    for t in frames:
        for variant in VARIANTS:
            if variant == "full_explicit" and t > args.explicit_max_frames:
                continue
            results[variant][t] = measure(t, variant, args)
            print(f"  measured {variant:>13} T={t:>5}: {results[variant][t]:9.1f} MiB", flush=True)

    labels = {"chunked": f"chunked (L={args.chunk_len}, fused)", "full_fused": "full attention (fused SDPA)",
              "full_explicit": "full attention (explicit softmax)"}
    print(f"\n| {'variant':<36} | " + " | ".join(f"T={t:>5}" for t in frames) + " | ratios per doubling |")
    print(f"|{'-' * 38}|" + "|".join("-" * 9 for _ in frames) + "|---------------------|")
    ratios: dict[str, list[float]] = {}
    for variant in VARIANTS:
        row = results[variant]
        cells = [f"{row[t]:7.0f}" if t in row else "      -" for t in frames]
        measured = [t for t in frames if t in row]
        ratios[variant] = [row[b] / row[a] for a, b in itertools.pairwise(measured)]
        print(f"| {labels[variant]:<36} | " + " | ".join(f"{c:>7}" for c in cells)
              + " | " + " ".join(f"{r:.2f}x" for r in ratios[variant]) + " |")
    worst = max(ratios["chunked"], default=float("nan"))
    ok = bool(ratios["chunked"]) and worst <= args.target
    print(f"\nchunked: worst ratio per doubling {worst:.2f}x (target <= {args.target}x) {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
