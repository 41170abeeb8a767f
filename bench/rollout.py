"""Attention rollout: ours (batched over frames and heads) vs a per-frame numpy loop.

docs/design.md §8: 24 layers x 433 x 433 attention x 64 frames; target >= 10x over the
reference procedure run frame by frame in numpy (vit-explain / attention_flow style:
``result = eye(N)``; per layer mean over heads, ``+ I``, row-normalise, ``result = a @ result``;
``np.eye`` is float64, so the reference accumulates in float64, as written). The same loop
kept in float32 is timed too and printed as a second, stricter ratio.
Both compute the full N x N rollout per frame; outputs are checked equal.

    .venv/bin/python bench/rollout.py [--layers 24 --tokens 433 --frames 64 --heads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from strata.rollout import rollout


def reference_per_frame(attn: np.ndarray) -> np.ndarray:
    """The reference procedure, one frame at a time (attn: [layers, frames, heads, N, N])."""
    layers, frames, _, n, _ = attn.shape
    out = np.empty((frames, n, n))
    for f in range(frames):
        result = np.eye(n)
        for layer in range(layers):
            a = attn[layer, f].mean(axis=0) + np.eye(n)
            a = a / a.sum(axis=-1, keepdims=True)
            result = a @ result
        out[f] = result
    return out


def reference_per_frame_float32(attn: np.ndarray) -> np.ndarray:
    """The same loop kept in float32 (``np.eye(n, dtype=float32)``), a stricter baseline."""
    layers, frames, _, n, _ = attn.shape
    out = np.empty((frames, n, n), dtype=np.float32)
    eye = np.eye(n, dtype=np.float32)
    for f in range(frames):
        result = eye
        for layer in range(layers):
            a = attn[layer, f].mean(axis=0) + eye
            a = a / a.sum(axis=-1, keepdims=True)
            result = a @ result
        out[f] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=433)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--target", type=float, default=10.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.layers, args.frames, args.heads, args.tokens, args.tokens)
    attn = rng.random(shape, dtype=np.float32)
    attn /= attn.sum(-1, keepdims=True)
    layers = [torch.from_numpy(attn[layer]) for layer in range(args.layers)]

    rollout(layers[:2])  # warm-up
    t0 = time.perf_counter()
    ours = rollout(layers)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = reference_per_frame(attn)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref32 = reference_per_frame_float32(attn)
    t_ref32 = time.perf_counter() - t0
    err = max(float(np.abs(ours.numpy() - ref).max()), float(np.abs(ours.numpy() - ref32).max()))
    ratio = t_ref / t_ours
    ok = err < 1e-4 and ratio >= args.target
    print(f"threads: {torch.get_num_threads()}, shape layers x frames x heads x N x N = {shape}")
    print(f"ours (torch, batched, float32): {t_ours:.3f} s")
    print(f"reference (numpy, per frame, float64 accumulation as written): {t_ref:.3f} s")
    print(f"reference kept in float32 (numpy, per frame): {t_ref32:.3f} s -> ratio {t_ref32 / t_ours:.1f}x")
    print(f"max abs difference: {err:.2e}")
    print(f"rollout: ratio {ratio:.1f}x (target {args.target}x) {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
