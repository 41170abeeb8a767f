"""The token flow of a configured hierarchical ViT-3D, measured from a real forward pass.

``python -m strata.models.hiera3d_shapes --config config/full.yaml --run pose``
"""

from __future__ import annotations

import argparse
import math

import torch

from strata.models.hiera3d import REFERENCE_PARAMETERS_M, Hiera3DConfig, Hiera3DMAE


def explain_shapes(config: Hiera3DConfig) -> str:
    """The token flow of ``config``, measured with hooks on a real forward pass (batch 1)."""
    torch.manual_seed(0)
    model = Hiera3DMAE(config).eval()
    c = config
    x = torch.zeros(1, c.in_channels, *c.input_size)
    seen: dict[int, tuple[int, ...]] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, tuple(out[0].shape)))
             for i, b in enumerate(model.encoder.blocks)]
    with torch.no_grad():
        features = model.encoder.forward_features(x)
        seen_unmasked = dict(seen)
        seen.clear()
        mask = model.random_masking(1)
        _, pred, _ = model(x, mask)
    for h in hooks:
        h.remove()
    lines = [(f"input [B, {c.in_channels}, {', '.join(map(str, c.input_size))}] -> patches "
              f"{'x'.join(map(str, c.patch_size))} -> token grid {'x'.join(map(str, c.token_grid))}")]
    flow = []
    for s, end in enumerate(model.encoder.stage_ends):
        _, u, length, dim = seen_unmasked[end]
        tokens = u * length
        pooled = "" if s == 0 else f"(q-pool {math.prod(c.q_strides[s - 1])}x) "
        attn = "mask-unit attention" if c.mask_unit_attn[s] else "global attention"
        lines.append(f"stage {s}: {pooled}{tokens} tokens x {dim} ({c.stages[s]} blocks, {c.stage_heads(s)} heads, "
                     f"{attn}; grid {'x'.join(map(str, features[s].shape[1:4]))}, receptive field "
                     f"{'x'.join(map(str, c.receptive_field(s)))}) -> projected to {features[s].shape[-1]}")
        flow.append(f"{tokens} x {dim}")
    lines.append("token flow: " + " -> ".join(flow) + f" (-> {c.out_embed_dims[-1]})")
    kept = int((~mask).sum())
    lines.append(f"mask units: {c.num_units} of {'x'.join(map(str, c.mask_unit_shape))} tokens, "
                 f"{kept} kept at mask ratio {c.mask_ratio:.2f}; encoder sees {kept * math.prod(c.mask_unit_shape)} "
                 f"tokens -> " + " -> ".join(f"{seen[e][1] * seen[e][2]}" for e in model.encoder.stage_ends))
    lines.append(f"predictions [B, {pred.shape[1]}, {pred.shape[2]}] (time-strided target: "
                 f"{'x'.join(map(str, c.target_patch))} x {c.embedded_channels} channel(s) per unit)")
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    ref = REFERENCE_PARAMETERS_M
    lines.append(f"parameters: encoder {enc / 1e6:.2f} M ({enc:,}), decoder {dec / 1e6:.2f} M ({dec:,}) "
                 f"(reference hBehaveMAE at the full pose config: encoder {ref['encoder']:.2f} M, "
                 f"decoder {ref['decoder']:.2f} M)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from strata.config import from_dict, read_yaml

    parser = argparse.ArgumentParser(prog="python -m strata.models.hiera3d_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--explain-shapes", action="store_true",
                        help="accepted for compatibility (printing the token flow is all this does)")
    parser.add_argument("--config", required=True, help="a strata config YAML")
    parser.add_argument("--run", default="pose", help="models.hiera3d.<run> (default: pose)")
    args = parser.parse_args(argv)
    raw = read_yaml(args.config)
    runs = raw.get("models", {}).get("hiera3d", {})
    if args.run not in runs:
        parser.error(f"{args.config} has no models.hiera3d.{args.run} (runs: {', '.join(runs) or 'none'})")
    where = f"models.hiera3d.{args.run}.architecture"
    print(explain_shapes(from_dict(Hiera3DConfig, runs[args.run]["architecture"], where=where)))


if __name__ == "__main__":
    main()
