"""Hierarchical ViT-3D MAE (docs/design.md §4.1): token flow, masking, loss, attention, checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO

from strata.config import from_dict
from strata.models.hiera3d import Hiera3DConfig, Hiera3DMAE
from strata.models.hiera3d_checkpoint import (
    CheckpointError,
    config_from_reference_args,
    load_reference_checkpoint,
)
from strata.rollout import rollout

FULL = from_dict(Hiera3DConfig, yaml.safe_load((REPO / "config" / "full.yaml").read_text())
                 ["models"]["hiera3d"]["pose"]["architecture"])
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["hiera3d"]
# a small pose-like model with every feature of the full one (3 stages, local then global)
SMALL = dataclasses.replace(FULL, input_size=(16, 1, 24), embed_dim=16, stages=(1, 2, 1),
                            q_strides=((2, 1, 2), (2, 1, 2)), out_embed_dims=(8, 12, 16), decoder_embed_dim=16,
                            mask_ratio=0.5)


def build(config: Hiera3DConfig, seed: int = 0) -> Hiera3DMAE:
    torch.manual_seed(seed)
    return Hiera3DMAE(config)


# --------------------------------------------------------------------------- full config


@pytest.fixture(scope="module")
def full_model() -> Hiera3DMAE:
    return build(FULL).eval()


def test_full_config_token_flow_from_a_real_forward(full_model):
    """4800 x 96 -> 600 x 192 -> 50 x 384 (-> 256); 50 units of 4x1x24, 15 kept; [B, 50, 288]."""
    outputs: dict[int, torch.Size] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0].shape))
             for i, b in enumerate(full_model.encoder.blocks)]
    x = torch.randn(1, 1, 400, 1, 72)
    with torch.no_grad():
        features = full_model.encoder.forward_features(x)
        unmasked = dict(outputs)
        loss, pred, mask = full_model(x)
    for h in hooks:
        h.remove()
    ends = [1, 4, 8]  # last block of each stage (2, 3, 4 blocks)
    tokens = [(unmasked[e][1] * unmasked[e][2], unmasked[e][3]) for e in ends]
    assert tokens == [(4800, 96), (600, 192), (50, 384)]
    assert len(full_model.encoder.blocks) == 9
    # per-stage grids and projections; a token covers input / grid elements per axis
    assert [tuple(f.shape) for f in features] == [(1, 200, 1, 24, 78), (1, 100, 1, 6, 128), (1, 50, 1, 1, 256)]
    fields = [tuple(n // g for n, g in zip((400, 1, 72), f.shape[1:4])) for f in features]
    assert fields == [(2, 1, 3), (4, 1, 12), (8, 1, 72)]
    # mask units: 50 units of 4x1x24 = 96 tokens; 15 kept at 0.70
    assert unmasked[0][1:3] == (50, 96)
    assert mask.shape == (1, 50) and int((~mask).sum()) == 15
    masked_tokens = [outputs[e][1] * outputs[e][2] for e in ends]
    assert masked_tokens == [15 * 96, 15 * 12, 15]
    assert pred.shape == (1, 50, 288) and torch.isfinite(loss)


def test_full_config_parameter_counts_match_the_reference(full_model):
    encoder = sum(p.numel() for p in full_model.encoder.parameters())
    decoder = sum(p.numel() for p in full_model.decoder.parameters())
    assert round(encoder / 1e6, 2) == 8.63
    assert round(decoder / 1e6, 2) == 0.28


def test_explain_shapes_cli_prints_the_spec_flow():
    proc = subprocess.run([sys.executable, "-m", "strata.models.hiera3d_shapes", "--config",
                           str(REPO / "config" / "full.yaml"), "--run", "pose"],
                          capture_output=True, text=True, timeout=120, check=True)
    out = proc.stdout
    assert "token flow: 4800 x 96 -> 600 x 192 -> 50 x 384 (-> 256)" in out
    for needle in ("receptive field 2x1x3", "receptive field 4x1x12", "receptive field 8x1x72",
                   "50 of 4x1x24 tokens, 15 kept at mask ratio 0.70", "predictions [B, 50, 288]",
                   "encoder 8.63 M", "decoder 0.28 M"):
        assert needle in out


# --------------------------------------------------------------------------- invalid configurations


@pytest.mark.parametrize(("q_strides", "axis"), [
    (((3, 1, 4), (2, 1, 6)), "T (time)"),   # 200 tokens in time, product 6
    (((2, 1, 4), (2, 1, 5)), "W (width)"),  # 24 tokens in width, product 20
])
def test_strides_that_do_not_divide_the_grid_fail_naming_the_axis(q_strides, axis):
    with pytest.raises(ValueError, match=rf"axis {re.escape(axis)}: the q-strides .* do not divide the token grid"):
        Hiera3DMAE(dataclasses.replace(FULL, q_strides=q_strides))


def test_height_axis_is_named_too():
    with pytest.raises(ValueError, match=r"axis H \(height\)"):
        dataclasses.replace(FULL, input_size=(400, 4, 72), q_strides=((2, 3, 4), (2, 1, 6)))


@pytest.mark.parametrize(("change", "message"), [
    ({"input_size": (401, 1, 72)}, r"axis T \(time\): input size 401 is not divisible by patch size 2"),
    ({"q_strides": ((2, 1, 4),)}, r"q_strides needs one stride per stage after the first"),
    ({"mask_unit_attn": (True, False)}, r"mask_unit_attn needs one entry per stage"),
    ({"out_embed_dims": (78, 128)}, r"out_embed_dims needs one entry per stage"),
    ({"num_heads": 5}, r"embed_dim 96 is not divisible by num_heads 5"),
    ({"decoder_num_heads": 3}, r"decoder_embed_dim 128 is not divisible"),
    ({"mask_ratio": 0.99}, r"keeps 0 of 50 mask units"),
    ({"mask_ratio": 1.0}, r"mask_ratio must lie in \(0, 1\)"),
    ({"stages": (2, 0, 4)}, r"stages must list"),
])
def test_invalid_combinations_raise(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FULL, **change)


# --------------------------------------------------------------------------- masking and loss


def test_masking_is_by_unit_seeded_and_counts_kept_units():
    model = build(SMALL)
    a = model.random_masking(6, generator=torch.Generator().manual_seed(3))
    b = model.random_masking(6, generator=torch.Generator().manual_seed(3))
    c = model.random_masking(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, SMALL.num_units) and ((~a).sum(1) == SMALL.num_kept).all()


def test_masked_units_do_not_reach_the_encoder():
    model = build(SMALL).eval()
    x = torch.randn(2, 1, *SMALL.input_size)
    mask = model.random_masking(2, generator=torch.Generator().manual_seed(0))
    latent, _ = model.forward_encoder(x, mask)
    # overwrite every masked unit's input region: the latent of the kept units must not move
    mt, _, mw = SMALL.mask_unit_shape
    pt, _, pw = SMALL.patch_size
    uw = SMALL.unit_grid[2]
    y = x.clone()
    for bi in range(2):
        for u in torch.nonzero(mask[bi]).flatten().tolist():
            t, w = divmod(u, uw)
            y[bi, :, t * mt * pt:(t + 1) * mt * pt, :, w * mw * pw:(w + 1) * mw * pw] = 100.0
    assert torch.allclose(model.forward_encoder(y, mask)[0], latent, atol=1e-6)
    # ... while with the complementary mask (ratio 0.5) the perturbed units are seen
    assert not torch.allclose(model.forward_encoder(y, ~mask)[0], model.forward_encoder(x, ~mask)[0])


def test_loss_counts_masked_units_only_and_target_is_time_strided():
    model = build(SMALL)
    x = torch.randn(2, 1, *SMALL.input_size, requires_grad=False)
    mask = model.random_masking(2, generator=torch.Generator().manual_seed(1))
    pred = torch.zeros(2, SMALL.num_units, SMALL.pred_dim, requires_grad=True)
    model.forward_loss(x, pred, mask).backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask].abs().sum(-1) > 0).all()
    # units of 8 frames x 12 features; the target of unit (t=1, w=0) is frames 4..7 of the
    # time-strided input x[:, :, ::2] and features 0..11, flattened (t h w c) with h = c = 1
    target = model.target(x)
    expected = x[:, :, ::2][0, 0, 4:8, 0, 0:12].reshape(-1)
    unit = 1 * SMALL.unit_grid[2] + 0
    assert SMALL.unit_grid == (2, 1, 2) and SMALL.pred_dim == 48 and torch.equal(target[0, unit], expected)


def test_velocity_channels_reach_the_patches_and_the_targets():
    config = dataclasses.replace(SMALL, velocity_gain=10.0)
    model = build(config)
    x = torch.randn(2, 1, *config.input_size)
    # the targets carry the positions, then 10 x the change from the previous frame (0 on frame 0)
    step = torch.diff(x, dim=2, prepend=x[:, :, :1])
    target = model.target(x).reshape(2, config.num_units, -1, 2)  # (t h w c) with c = position, velocity
    plain = build(SMALL).target(x)
    assert config.pred_dim == 2 * SMALL.pred_dim
    assert torch.equal(target[..., 0], plain)
    assert torch.allclose(target[..., 1], build(SMALL).target(10.0 * step))
    assert model.encoder.patch_embed.proj.in_channels == 2


def test_per_patch_mean_baseline():
    model = build(SMALL)
    x = torch.randn(3, 1, *SMALL.input_size)
    mask = model.random_masking(3)
    target = model.target(x)
    pred = target.mean(dim=-1, keepdim=True).expand_as(target)
    assert torch.allclose(model.per_patch_mean_loss(x, mask), model.forward_loss(x, pred, mask))
    normed = build(dataclasses.replace(SMALL, norm_pix_loss=True))
    p = SMALL.pred_dim
    assert normed.per_patch_mean_loss(x, mask).item() == pytest.approx((p - 1) / p, rel=1e-3)


# --------------------------------------------------------------------------- attention


def test_explicit_and_fused_attention_agree():
    model = build(SMALL).eval()
    x = torch.randn(2, 1, *SMALL.input_size)
    mask = model.random_masking(2)
    fused, pred_f, _ = model(x, mask)
    explicit, pred_e, _ = model(x, mask, explicit_attention=True)
    assert torch.allclose(pred_f, pred_e, atol=1e-5) and torch.allclose(fused, explicit, atol=1e-6)


def test_attention_probabilities_local_then_global_and_pooled_queries():
    model = build(SMALL).eval()
    x = torch.randn(1, 1, *SMALL.input_size)
    attn = model.encoder.forward_attention(x)
    grids = [math.prod(SMALL.stage_grid(s)) for s in range(3)]
    assert grids == [64, 16, 4]
    assert [tuple(a.shape[2:]) for a in attn] == [(grids[0], grids[0]), (grids[1], grids[0]),
                                                   (grids[1], grids[1]), (grids[2], grids[1])]
    assert [a.shape[1] for a in attn] == [2, 4, 4, 8]
    for a in attn:
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5)

    def unit_of(stage: int) -> torch.Tensor:  # mask unit of every raster position of a stage grid
        t, h, w = SMALL.stage_grid(stage)
        mt, mh, mw = SMALL.stage_unit_shape(stage)
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        uh, uw = h // mh, w // mw
        return ((tt // mt) * uh * uw + (hh // mh) * uw + ww // mw).flatten()

    same = [unit_of(0)[:, None] == unit_of(0)[None], unit_of(1)[:, None] == unit_of(0)[None]]
    # block 0 (stage 0) and block 1 (first block of stage 1, pools) are local to mask units
    for a, allowed in zip(attn[:2], same):
        assert (a[0][:, ~allowed] == 0).all() and (a[0][:, allowed] > 0).all()
    # block 2 (inside stage 1) is global: it attends across units
    cross = unit_of(1)[:, None] != unit_of(1)[None]
    assert (attn[2][0][:, cross] > 0).all()


def test_pooling_matrices_chain_into_a_rollout():
    model = build(SMALL).eval()
    attn = model.encoder.forward_attention(torch.randn(1, 1, *SMALL.input_size))
    residuals = model.encoder.pooling_matrices()
    assert [r is None for r in residuals] == [True, False, True, False]
    pool = residuals[1]  # (16, 64): each pooled token averages its 2x1x2 window of stage-0 tokens
    assert pool.shape == (16, 64) and torch.allclose(pool.sum(-1), torch.ones(16))
    assert ((pool > 0).sum(-1) == 4).all()
    # on the 8x1x8 stage-0 grid, pooled token (0, 0, 0) covers (t, w) in {0, 1} x {0, 1}: 0, 1, 8, 9;
    # pooled token (1, 0, 3) (raster 7) covers t in {2, 3}, w in {6, 7}: 22, 23, 30, 31
    assert torch.nonzero(pool[0]).flatten().tolist() == [0, 1, 8, 9]
    assert torch.nonzero(pool[7]).flatten().tolist() == [22, 23, 30, 31]
    r = rollout(attn, residuals)
    assert r.shape == (1, 4, 64) and torch.allclose(r.sum(-1), torch.ones(1, 4), atol=1e-5)


# --------------------------------------------------------------------------- training on both modalities


@pytest.mark.parametrize(("run", "channels"), [("pose", 1), ("ct", 1), ("ct", 3)])
def test_training_step_on_each_modality(run, channels):
    config = from_dict(Hiera3DConfig, {**DEMO[run]["architecture"], "in_channels": channels})
    model = build(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    torch.manual_seed(1)
    out = model.training_step({"x": torch.randn(2, channels, *config.input_size)})
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "encoder.patch_embed.proj.weight" in changed and "decoder.pred.weight" in changed
    assert set(out.metrics) == {"loss", "mask_ratio", "per_patch_mean_loss"}
    assert out.metrics["mask_ratio"] == pytest.approx(1 - config.num_kept / config.num_units)
    assert all(isinstance(v, float) for v in out.metrics.values())


# --------------------------------------------------------------------------- reference checkpoints


def reference_state_dict(c: Hiera3DConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Keys and shapes of amathislab/BehaveMAE's HBehaveMAE (sep_pos_embed, decoding "single"),
    written out from the reference source, filled with random values."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name: str, n: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)

    t, h, w = (n // p for n, p in zip(c.input_size, c.patch_size))
    shapes["pos_embed_spatial"], shapes["pos_embed_temporal"] = (1, h * w, c.embed_dim), (1, t, c.embed_dim)
    shapes["patch_embed.proj.weight"], shapes["patch_embed.proj.bias"] = (c.embed_dim, 1, *c.patch_size), (c.embed_dim,)
    i, dim = 0, c.embed_dim
    for stage, depth in enumerate(c.stages):
        for j in range(depth):
            dim_out = c.embed_dim * 2 ** stage
            norm(f"blocks.{i}.norm1", dim)
            linear(f"blocks.{i}.attn.qkv", dim, 3 * dim_out)
            linear(f"blocks.{i}.attn.proj", dim_out, dim_out)
            norm(f"blocks.{i}.norm2", dim_out)
            linear(f"blocks.{i}.mlp.fc1", dim_out, 4 * dim_out)
            linear(f"blocks.{i}.mlp.fc2", 4 * dim_out, dim_out)
            if dim != dim_out:
                linear(f"blocks.{i}.proj", dim, dim_out)
            i, dim = i + 1, dim_out
    for s, out in enumerate(c.out_embed_dims):
        linear(f"projections.{s}", c.embed_dim * 2 ** s, out)
    norm("encoder_norm", c.out_embed_dims[-1])
    mu = [math.prod(s[a] for s in c.q_strides) for a in range(3)]
    for s in range(len(c.q_strides)):  # built by the reference even when decoding is "single"
        kernel = [math.prod(st[a] for st in c.q_strides[s:]) for a in range(3)]
        shapes[f"multi_scale_fusion_heads.{s}.weight"] = (c.out_embed_dims[-1], c.out_embed_dims[s], *kernel)
        shapes[f"multi_scale_fusion_heads.{s}.bias"] = (c.out_embed_dims[-1],)
    d = c.decoder_embed_dim
    linear("decoder_embed", c.out_embed_dims[-1], d)
    shapes["mask_token"] = (1, 1, d)
    shapes["decoder_pos_embed"] = (1, math.prod(n // m for n, m in zip((t, h, w), mu)), d)
    norm("decoder_blocks.0.norm1", d)
    linear("decoder_blocks.0.attn.qkv", d, 3 * d)
    linear("decoder_blocks.0.attn.proj", d, d)
    norm("decoder_blocks.0.norm2", d)
    linear("decoder_blocks.0.mlp.fc1", d, 4 * d)
    linear("decoder_blocks.0.mlp.fc2", 4 * d, d)
    norm("decoder_norm", d)
    linear("decoder_pred", d, c.patch_size[1] * c.patch_size[2] * math.prod(mu))
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


REFERENCE_ARGS = {"model": "hbehavemae", "input_size": [400, 1, 72], "stages": [2, 3, 4], "q_strides": [(2, 1, 4), (2, 1, 6)],
                      "mask_unit_attn": [True, False, False], "patch_kernel": [2, 1, 3], "init_embed_dim": 96,
                      "init_num_heads": 2, "out_embed_dims": [78, 128, 256], "decoder_embed_dim": 128, "decoder_depth": 1,
                      "decoder_num_heads": 1, "decoding_strategy": "single", "mask_ratio": 0.70, "norm_loss": False,
                      "non_hierarchical": False, "sep_pos_embed": True, "output_dir": "outputs/shot7m2", "lr": None, "blr": 1.6e-4}
RENAMES = {"encoder_norm.": "encoder.norm.", "decoder_embed.": "decoder.embed.", "mask_token": "decoder.mask_token",
           "decoder_pos_embed": "decoder.pos_embed", "decoder_blocks.": "decoder.blocks.",
           "decoder_norm.": "decoder.norm.", "decoder_pred.": "decoder.pred."}


def test_reference_checkpoint_loads_every_tensor(tmp_path):
    weights = reference_state_dict(FULL, torch.Generator().manual_seed(0))
    path = tmp_path / "checkpoint-00199.pth"
    torch.save({"model": weights, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}]},
                "epoch": 199, "scaler": {}, "args": argparse.Namespace(**REFERENCE_ARGS)}, path)
    single = dataclasses.replace(FULL, decoding_strategy="single")
    assert config_from_reference_args(argparse.Namespace(**REFERENCE_ARGS)) == single
    model = load_reference_checkpoint(path)
    assert model.config == single
    ours = model.state_dict()
    mapped = 0
    for key, value in weights.items():
        if key.startswith("multi_scale_fusion_heads."):
            continue
        new = next((new + key[len(old):] for old, new in RENAMES.items() if key.startswith(old)), "encoder." + key)
        assert torch.equal(ours[new], value), key
        mapped += 1
    assert mapped == len(ours)
    with torch.no_grad():
        loss, pred, _ = model(torch.randn(2, 1, 400, 1, 72))
    assert pred.shape == (2, 50, 288) and torch.isfinite(loss)


def test_multi_scale_checkpoint_fuses_stages_as_the_reference_conv(tmp_path):
    """decoding_strategy multi: the reference's fusion Conv3d (kernel = stride = the unit) loads as
    this module's linear map, and the fused decoder input equals the convolution's."""
    weights = reference_state_dict(FULL, torch.Generator().manual_seed(0))
    path = tmp_path / "checkpoint-multi.pth"
    torch.save({"model": weights, "args": argparse.Namespace(**{**REFERENCE_ARGS, "decoding_strategy": "multi"})}, path)
    model = load_reference_checkpoint(path).eval().double()  # random weights give values ~1e6: float64
    assert model.config.decoding_strategy == "multi"
    x = torch.randn(2, 1, 400, 1, 72, dtype=torch.float64)
    mask = model.random_masking(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stages, _ = model.encoder(x, model.kept_ids(mask))
        expected = model.encoder.projections[-1](stages[-1]).flatten(1, 2)
        for s, stage in enumerate(stages[:-1]):
            conv = torch.nn.Conv3d(FULL.out_embed_dims[s], FULL.out_embed_dims[-1],
                                   kernel_size=FULL.stage_unit_shape(s), stride=FULL.stage_unit_shape(s)).double()
            conv.weight.copy_(weights[f"multi_scale_fusion_heads.{s}.weight"])
            conv.bias.copy_(weights[f"multi_scale_fusion_heads.{s}.bias"])
            t, h, w = FULL.stage_unit_shape(s)
            units = model.encoder.projections[s](stage)  # (B, U, L, D), tokens of a unit in raster order
            grid = units.reshape(-1, t, h, w, units.shape[-1]).permute(0, 4, 1, 2, 3)  # (B*U, D, t, h, w)
            expected = expected + conv(grid).reshape(2, -1, FULL.out_embed_dims[-1])
        torch.testing.assert_close(model.fuse_stages(stages), expected)


@pytest.mark.parametrize("strategy", ["single", "multi"])
def test_multi_scale_decoding_trains_every_level_projection(strategy):
    """Only with multi-scale decoding does the loss reach the lower levels' projections
    (the probing features of levels 0 and 1)."""
    model = build(dataclasses.replace(SMALL, decoding_strategy=strategy))
    loss, _, _ = model(torch.randn(2, 1, 16, 1, 24))
    loss.backward()
    lower = [model.encoder.projections[s].weight.grad for s in range(len(SMALL.stages) - 1)]
    if strategy == "multi":
        assert all(g is not None and g.abs().sum() > 0 for g in lower)
    else:
        assert all(g is None for g in lower)
        assert not any(k.startswith("fusion_heads") for k in model.state_dict())


def test_reference_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    weights = reference_state_dict(FULL, torch.Generator().manual_seed(0))
    weights["decoder_pred.weight"] = torch.zeros(100, 128)
    path = tmp_path / "checkpoint-bad.pth"
    torch.save({"model": weights, "args": argparse.Namespace(**REFERENCE_ARGS)}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch decoder\.pred\.weight"):
        load_reference_checkpoint(path)


class Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = str(marker)
    path = tmp_path / "checkpoint-evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_reference_checkpoint(path)
    assert not marker.exists()

