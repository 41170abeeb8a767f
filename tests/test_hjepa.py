"""H-JEPA (docs/design.md §4.2): masking, hierarchy on the full grid, EMA, and learning on demo pose."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from strata.config import DemoPoseConfig, PosePreprocessConfig
from strata.models.hjepa import (
    FPN,
    HJEPA,
    FPNConfig,
    HJEPAConfig,
    LevelProjection,
    MultiBlockMaskSampler,
    center_per_position,
    mask_to_ids,
    pool_along_axis,
    position_centred,
    upsample_masked,
    vicreg_terms,
)
from strata.pose.demo import write_demo_pose
from strata.pose.stage import preprocess_pose
from strata.training.config import OptimConfig, TrainConfig
from strata.training.datasets import PoseWindows
from strata.training.loop import RunSpec, train
from strata.training.run import ChannelAxis

POSE = HJEPAConfig(
    input_size=(64, 1, 72), in_channels=1, patch_size=(2, 1, 24),  # grid 32 (time) x 1 x 3 (mice)
    embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, pos_embed="sincos",
    predictor_embed_dim=32, predictor_depth=2, predictor_num_heads=2,
    num_target_blocks=3, target_scale=(0.1, 0.2), target_aspect_ratio=(0.75, 1.5), context_scale=(0.85, 1.0),
    levels=3, pool_axis=0, level_weights=(1.0, 0.5, 0.25), loss="smooth_l1",
    fpn=FPNConfig(dim=32, fusion="add"), ema_momentum=(0.99, 1.0), ema_schedule="linear")
CT = dataclasses.replace(  # volumes [1, H=32, W=32, D=16]: grid 4 x 4 x 8, pooled along D
    POSE, input_size=(32, 32, 16), patch_size=(8, 8, 2), pool_axis=2, num_target_blocks=2,
    target_scale=(0.15, 0.25), context_scale=(0.85, 1.0), fpn=FPNConfig(dim=32, fusion="concat"),
    ema_schedule="cosine")


def model_of(config: HJEPAConfig, seed: int = 0) -> HJEPA:
    torch.manual_seed(seed)
    return HJEPA(config)


# ----------------------------------------------------------------------------- construction


def test_levels_must_divide_the_pooled_axis_and_the_error_names_the_largest_valid():
    with pytest.raises(ValueError, match=r"196 tokens.*largest valid levels is 3"):
        dataclasses.replace(POSE, input_size=(196, 1, 72), patch_size=(1, 1, 72), levels=4,
                            level_weights=(1.0, 1.0, 1.0, 1.0))
    ok = dataclasses.replace(POSE, input_size=(256, 1, 72), patch_size=(1, 1, 72), levels=4,
                             level_weights=(1.0, 1.0, 1.0, 1.0))
    model = model_of(ok)
    out = model(torch.randn(2, 1, 256, 1, 72))
    assert out.level_losses.shape == (4,) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match=r"no valid levels >= 2"):
        dataclasses.replace(POSE, input_size=(33, 1, 72), patch_size=(1, 1, 72))


@pytest.mark.parametrize(("edit", "message"), [
    ({"levels": 5, "level_weights": (1.0,) * 5}, r"levels must lie in 2\.\.4"),
    ({"level_weights": (1.0, 1.0)}, r"level_weights needs one weight per level \(3\)"),
    ({"pool_axis": 3}, r"pool_axis must be 0, 1 or 2"),
    ({"patch_size": (3, 1, 24)}, r"input size 64 is not divisible by patch size 3"),
    ({"num_target_blocks": 5}, r"context_scale\[0\] = 0\.85 must exceed"),
    ({"target_scale": (0.3, 0.2)}, r"target_scale must satisfy"),
    ({"embed_dim": 62}, r"embed_dim 62 is not divisible by num_heads 4"),
    ({"ema_momentum": (0.999, 0.99)}, r"ema_momentum must satisfy"),
    ({"loss": "l1"}, r"loss must be 'smooth_l1' or 'mse'"),
    ({"level_weights": (1.0, 0.0, 0.5)}, r"level_weights must all be positive"),
])
def test_invalid_combinations_raise_value_error(edit, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(POSE, **edit)


def test_fpn_layers_exist_only_with_fpn():
    plain = model_of(dataclasses.replace(POSE, fpn=None))
    assert plain.fpn is None and not any("fpn" in name for name, _ in plain.named_parameters())
    add, concat = model_of(POSE), model_of(dataclasses.replace(POSE, fpn=FPNConfig(dim=32, fusion="concat")))
    assert add.fpn.fuse is None and len(concat.fpn.fuse) == POSE.levels - 1
    assert len(plain.levels.proj) == POSE.levels - 1  # level 0 is the identity: no projection


# ----------------------------------------------------------------------------- masking


def test_masks_context_and_targets_are_disjoint_and_shaped_as_configured():
    model = model_of(POSE)
    torch.manual_seed(3)
    masks = model.sample_masks(64)
    n = math.prod(POSE.token_grid)
    assert masks.context.shape == (64, n) and masks.targets.shape == (64, POSE.num_target_blocks, n)
    assert not (masks.context[:, None] & masks.targets).any()
    assert masks.context.any(dim=1).all() and masks.targets.any(dim=2).all()
    # per batch, a block has one extent: every sample holds the same number of its tokens
    counts = masks.targets.sum(dim=2)  # (B, M)
    assert (counts == counts[:1]).all()
    # targets are boxes: the bounding box of each block is full
    grid = masks.targets.view(64, POSE.num_target_blocks, *POSE.token_grid)
    for block in grid.flatten(0, 1)[:20]:
        idx = block.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        assert block[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1].all()


def test_every_grid_position_is_selectable_including_the_last_row_column_and_slice():
    grid = (5, 4, 3)
    sampler = MultiBlockMaskSampler(grid=grid, num_targets=1, target_scale=(0.1, 0.1),
                                    target_aspect_ratio=(1.0, 1.0), context_scale=(0.5, 0.5))
    g = torch.Generator().manual_seed(0)
    # single-token boxes: each start must reach size - 1 on every axis
    seen = sampler.place((1, 1, 1), 2000, g).any(dim=0)
    assert seen.all()
    # a box one shorter than the axis has exactly two starts; both are drawn (I-JEPA's
    # randint(0, size - extent) would only ever draw 0)
    placed = sampler.place((4, 3, 2), 400, g)
    assert placed[:, -1, -1, -1].any() and placed[:, 0, 0, 0].any()
    # through the full sampler: every position is a target somewhere, and context somewhere
    masks = sampler(3000, g)
    assert masks.targets.any(dim=(0, 1)).all() and masks.context.any(dim=0).all()


def test_masks_come_from_the_global_rng_so_a_replay_matches():
    model = model_of(POSE)
    torch.manual_seed(11)
    a = model.sample_masks(8)
    torch.manual_seed(11)
    b = model.sample_masks(8)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)


def test_mask_to_ids_lists_selected_tokens_in_raster_order_then_padding():
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    ids, valid = mask_to_ids(mask)
    assert ids[0].tolist() == [1, 3, 4] and valid[0].tolist() == [True, True, True]
    assert ids[1, 0] == 0 and valid[1].tolist() == [True, False, False]


# ----------------------------------------------------------------------------- hierarchy and loss


def random_grid(config: HJEPAConfig, n: int, seed: int, dim: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *config.token_grid, dim or config.embed_dim, generator=g)


@pytest.mark.parametrize("fpn", [None, FPNConfig(dim=32, fusion="add"), FPNConfig(dim=32, fusion="concat")])
@pytest.mark.parametrize("config", [POSE, CT], ids=["pose", "ct"])
def test_identical_prediction_and_target_give_zero_loss_at_every_level(config, fpn):
    model = model_of(dataclasses.replace(config, fpn=fpn))
    torch.manual_seed(1)
    masks = model.sample_masks(4)
    valid = masks.targets.flatten(0, 1).view(-1, *config.token_grid)  # ((B M), t, h, w)
    features = random_grid(config, valid.shape[0], 0)
    loss, levels, windows = model.forward_loss(features, features.clone(), valid)
    assert loss.item() == 0.0 and (levels == 0).all()
    assert (windows > 0).all()  # every level was actually compared
    other = random_grid(config, valid.shape[0], 1)
    _, levels, _ = model.forward_loss(other, features, valid)
    assert (levels > 0).all()


def test_predictions_and_targets_are_pooled_by_the_same_operation():
    """Swapping two tokens inside one level-1 window changes level 0 only; swapping across
    a level-1 window boundary (same row, same block) changes level 1 as well. Any other
    pooling on one side (raster order, other alignment) would make level 1 non-zero."""
    model = model_of(dataclasses.replace(POSE, fpn=None))
    t, h, w = POSE.token_grid
    valid = torch.zeros(1, t, h, w, dtype=torch.bool)
    valid[0, 4:12, 0, 0:2] = True  # one target block: time 4..11, mice 0..1
    target = random_grid(POSE, 1, 0)
    inside = target.clone()
    inside[0, [4, 5], 0, 1] = target[0, [5, 4], 0, 1]  # tokens 4 and 5 share the level-1 window 2
    _, levels, _ = model.forward_loss(inside, target, valid)
    assert levels[0] > 0 and levels[1].abs() < 1e-6 and levels[2].abs() < 1e-6  # also one level-2 window (4..7)
    across = target.clone()
    across[0, [5, 6], 0, 1] = target[0, [6, 5], 0, 1]  # windows 2 (4, 5) and 3 (6, 7)
    _, levels, _ = model.forward_loss(across, target, valid)
    assert levels[0] > 0 and levels[1] > 1e-3 and levels[2].abs() < 1e-6  # both inside level-2 window 1


def test_a_pooling_window_never_mixes_two_blocks_or_two_rows():
    """Crafted grid: two target blocks touching in time in one row, a third block in the
    next row. Windows straddling the two blocks, or reaching outside a block, are invalid;
    every valid pooled value is the mean of its own row's tokens inside one block."""
    t, h, w = 16, 1, 2
    x = torch.arange(t * h * w, dtype=torch.float32).view(1, t, h, w, 1).repeat(3, 1, 1, 1, 1)  # token ids
    valid = torch.zeros(3, t, h, w, dtype=torch.bool)
    valid[0, 2:6, 0, 0] = True  # block A: time 2..5, row (mouse) 0
    valid[1, 6:12, 0, 0] = True  # block B: time 6..11, same row, touching A
    valid[2, 0:4, 0, 1] = True  # block C: time 0..3, row 1
    pooled, pooled_valid = pool_along_axis(x, valid, axis=0, factor=2)
    assert pooled_valid[0, :, 0, 0].nonzero().flatten().tolist() == [1, 2]  # windows (2,3), (4,5)
    assert pooled_valid[1, :, 0, 0].nonzero().flatten().tolist() == [3, 4, 5]  # (6,7), (8,9), (10,11)
    assert not pooled_valid[:2, :, 0, 1].any() and not pooled_valid[2, :, 0, 0].any()
    assert pooled[0, 1, 0, 0, 0] == (x[0, 2, 0, 0, 0] + x[0, 3, 0, 0, 0]) / 2  # ids 4 and 6: same row
    assert pooled[2, 1, 0, 1, 0] == (x[2, 2, 0, 1, 0] + x[2, 3, 0, 1, 0]) / 2  # row 1 only (ids 5 and 7)
    four, four_valid = pool_along_axis(x, valid, axis=0, factor=4)
    assert four_valid[0, :, 0, 0].tolist() == [False] * 4  # A (2..5) holds no aligned 4-window
    assert four_valid[1, :, 0, 0].tolist() == [False, False, True, False]  # B: 8..11 only
    assert four[1, 2, 0, 0, 0] == x[1, 8:12, 0, 0, 0].mean()
    assert (pooled[~pooled_valid] == 0).all() and (four[~four_valid] == 0).all()
    # the level module applies exactly this pooling (then its projection) on every level
    levels = LevelProjection(dim=1, levels=3, pool_axis=0)(x, valid)
    assert [torch.equal(v, e) for (_, v), e in zip(levels, (valid, pooled_valid, four_valid))] == [True] * 3


@pytest.mark.parametrize("fpn", [None, FPNConfig(dim=32, fusion="concat")])
def test_padded_and_unpredicted_slots_contribute_nothing_to_the_loss(fpn):
    config = dataclasses.replace(POSE, fpn=fpn)
    model = model_of(config)
    torch.manual_seed(5)
    masks = model.sample_masks(4)
    ids, valid = mask_to_ids(masks.targets)  # (B, M, Kt)
    pred = torch.randn(*ids.shape, config.embed_dim)
    targets = random_grid(config, ids.shape[0] * ids.shape[1], 7)
    grid, grid_valid = model.scatter_to_grid(pred, ids, valid)
    assert torch.equal(grid_valid, masks.targets.flatten(0, 1).view(-1, *config.token_grid))
    base, _, _ = model.forward_loss(grid, targets, grid_valid)
    # padded predictor outputs, and every slot outside the target block on either side
    noisy_pred = torch.where(valid[..., None], pred, torch.randn_like(pred) * 100)
    noisy_grid, _ = model.scatter_to_grid(noisy_pred, ids, valid)
    noisy_grid = torch.where(grid_valid[..., None], noisy_grid, torch.randn_like(noisy_grid) * 100)
    noisy_targets = torch.where(grid_valid[..., None], targets, torch.randn_like(targets) * 100)
    changed, _, _ = model.forward_loss(noisy_grid, noisy_targets, grid_valid)
    assert (~valid).any()  # blocks of different sizes: there is padding to perturb
    torch.testing.assert_close(changed, base, rtol=1e-6, atol=1e-7)


def test_fpn_top_down_uses_linear_interpolation_along_the_pool_axis():
    fpn = FPN(in_dim=1, dim=1, levels=2, fusion="add", pool_axis=0)
    coarse = torch.tensor([0.0, 4.0]).view(1, 2, 1, 1, 1)
    up = upsample_masked(coarse, torch.ones(1, 2, 1, 1, dtype=torch.bool), 0, 4)
    assert up.flatten().tolist() == [0.0, 1.0, 3.0, 4.0]  # align_corners=False
    half = upsample_masked(coarse, torch.tensor([True, False]).view(1, 2, 1, 1), 0, 4)
    assert half.flatten().tolist() == [0.0, 0.0, 0.0, 0.0]  # the invalid coarse slot adds nothing
    assert len(fpn.lateral) == 2 and len(fpn.smooth) == 2


# ----------------------------------------------------------------------------- EMA and gradients


def sgd_step(model) -> None:
    """One SGD step (lr 0.5) of a training step on a fixed random pose batch."""
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    torch.manual_seed(2)
    model.training_step({"x": torch.randn(4, 1, 64, 1, 72)}).loss.backward()
    opt.step()


def test_ema_moves_the_target_by_exactly_the_momentum_formula_after_the_step():
    model = model_of(POSE)
    sgd_step(model)
    online = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
    before = {k: v.detach().clone() for k, v in model.target_encoder.named_parameters()}
    assert any(not torch.equal(online[k], before[k]) for k in online)  # the step moved the encoder
    step, total = 30, 100
    m = model.momentum(step, total)
    assert m == pytest.approx(0.99 + 0.01 * 30 / 100)
    model.after_optimizer_step(step, total)
    for name, param in model.target_encoder.named_parameters():
        torch.testing.assert_close(param, m * before[name] + (1 - m) * online[name], rtol=0, atol=1e-7)
        assert not torch.equal(param, before[name]) or torch.equal(online[name], before[name])


def test_momentum_schedules_run_from_start_to_end():
    linear, cosine = model_of(POSE), model_of(dataclasses.replace(POSE, ema_schedule="cosine"))
    for model in (linear, cosine):
        assert model.momentum(0, 100) == pytest.approx(0.99)
        assert model.momentum(100, 100) == pytest.approx(1.0)
    assert linear.momentum(50, 100) == pytest.approx(0.995) and cosine.momentum(50, 100) == pytest.approx(0.995)
    assert cosine.momentum(25, 100) < linear.momentum(25, 100)


def test_target_encoder_gets_no_gradient_and_is_not_trained():
    model = model_of(POSE)
    torch.manual_seed(4)
    model.training_step({"x": torch.randn(4, 1, 64, 1, 72)}).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.target_encoder.parameters()}
    assert {id(p) for p in model.encoder.parameters()} <= trainable
    assert {id(p) for p in model.predictor.parameters()} <= trainable
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.train()
    assert model.encoder.training and not model.target_encoder.training


def test_explicit_and_fused_attention_give_the_same_loss():
    model = model_of(POSE)
    torch.manual_seed(6)
    x = torch.randn(3, 1, 64, 1, 72)
    masks = model.sample_masks(3)
    fused, explicit = model(x, masks).loss, model(x, masks, explicit_attention=True).loss
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def pose_windows(tmp_path_factory: pytest.TempPathFactory) -> ChannelAxis:
    """Demo pose windows made by the project's own pipeline: [1, 64, 1, 72] items."""
    root = tmp_path_factory.mktemp("hjepa_pose")
    demo = DemoPoseConfig(n_sequences=12, n_frames=480, n_agents=3, n_keypoints=12, arena_px=850.0,
                          missing_fraction=0.02)
    pre = PosePreprocessConfig(window=64, stride=32, center="arena", arena_px=850.0, egocentric=False,
                               min_valid_fraction=0.0, shard_size=256)
    npy = root / "mouse_triplet_train.npy"
    write_demo_pose(demo, 1234, npy, root / "mouse_triplet_train.parquet")
    shards, manifest = root / "cache" / "pose" / "shards", root / "cache" / "pose" / "manifest.parquet"
    preprocess_pose(pre, npy, shards, manifest)
    return ChannelAxis(PoseWindows(manifest, shards))


def run_spec(run_dir: Path, batch: int, steps: int) -> RunSpec:
    cfg = TrainConfig(batch_size=batch, total_steps=steps, save_every=steps, num_workers=0, precision="fp32",
                      optim=OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=10,
                                        schedule="cosine", grad_clip=1.0))
    return RunSpec(train=cfg, seed=7, run_dir=run_dir, meta={"config": {"family": "hjepa"}},
                   architecture=dataclasses.asdict(POSE), fingerprint="hjepa-test")


@pytest.fixture
def one_thread():
    """The tiny model trains fastest on one thread; more only oversubscribe shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def level_losses_vs_position_oracle(model: HJEPA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level losses of the model on ``x`` and of a position-only oracle: predicting,
    at every token, the mean target of that position over the batch (the best any
    predictor that ignores the content can do, and it even knows the batch)."""
    torch.manual_seed(123)
    masks = model.sample_masks(x.shape[0])
    grid, m = model.config.token_grid, masks.targets.shape[1]
    with torch.no_grad():
        out = model(x, masks)
        oracle = out.targets.mean(dim=0, keepdim=True).expand_as(out.targets)  # (B, N, D)
        per_block = lambda t: t.repeat_interleave(m, dim=0).view(-1, *grid, t.shape[-1])  # ((B M), t, h, w, D)
        valid = masks.targets.flatten(0, 1).view(-1, *grid)
        _, oracle_levels, _ = model.forward_loss(per_block(oracle), per_block(out.targets), valid)
    return out.level_losses, oracle_levels


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known (issue #14): on the three-time-scale demo data the coarsest "
                   "level's loss is not below the position-only oracle after 100 steps; the verdict tracks it")
def test_learns_on_demo_pose_with_the_shared_loop_without_collapse(tmp_path, pose_windows, one_thread):
    """100 steps of the real loop on demo pose windows.

    * The loss falls clearly (mean of the last 10 steps < 0.7 x the first 3).
    * It falls for the right reason: at every level the trained model beats the
      position-only oracle, so it predicts the content of the hidden tokens, not just
      where they are (sin-cos positions are part of every target).
    * No collapse: the per-(token, dim) std over a batch of the target embeddings, which
      is 0 when the encoder maps every input to the same output, stays above half its
      value at initialisation (layer-normed targets have unit variance per token, so the
      init value, about 0.5, says how much of a target depends on the input at all).
    """
    probe = torch.stack([pose_windows[i]["x"] for i in range(0, len(pose_windows), 4)])  # (42, 1, 64, 1, 72)
    model = model_of(POSE)
    std_init = model.embedding_std(probe)
    log = train(model, pose_windows, run_spec(tmp_path, batch=16, steps=100))
    first, last = log["loss"].iloc[:3].mean(), log["loss"].iloc[-10:].mean()
    std_end = model.embedding_std(probe)
    levels, oracle = level_losses_vs_position_oracle(model, probe)
    print(f"H-JEPA pose: loss first-3 {first:.4f} -> last-10 {last:.4f} ({last / first:.3f}x); "
          f"level losses {levels.tolist()} vs position oracle {oracle.tolist()}; "
          f"target std over batch {std_init:.4f} -> {std_end:.4f}")
    assert last < 0.7 * first
    assert (levels < oracle).all()
    assert std_end > 0.5 * std_init
    assert (log["windows_level2"] > 0).all()  # the coarsest level took part in every step
    assert (tmp_path / "checkpoints" / "100" / "model.safetensors").exists()


class Interrupted(RuntimeError):
    pass


class KilledHJEPA(HJEPA):
    """H-JEPA whose process dies right after the EMA update of step ``fail_at``."""

    fail_at: int | None = None

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        super().after_optimizer_step(step, total_steps)
        if self.fail_at is not None and step + 1 == self.fail_at:
            raise Interrupted(f"killed after step {step + 1}")


def test_a_killed_and_resumed_run_replays_masks_and_ema_exactly(tmp_path, pose_windows, one_thread):
    config = dataclasses.replace(POSE, depth=1, predictor_depth=1)
    spec = lambda d: dataclasses.replace(run_spec(d, batch=8, steps=8), train=dataclasses.replace(
        run_spec(d, batch=8, steps=8).train, save_every=4))

    def fresh(fail_at: int | None = None) -> KilledHJEPA:
        torch.manual_seed(0)
        model = KilledHJEPA(config)
        model.fail_at = fail_at
        return model

    straight = train(fresh(), pose_windows, spec(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        train(fresh(fail_at=6), pose_windows, spec(tmp_path / "resumed"))
    resumed = train(fresh(), pose_windows, spec(tmp_path / "resumed"))
    assert resumed["loss"].tolist() == straight["loss"].tolist()
    for step in (4, 8):
        a = (tmp_path / "straight" / "checkpoints" / str(step) / "model.safetensors").read_bytes()
        b = (tmp_path / "resumed" / "checkpoints" / str(step) / "model.safetensors").read_bytes()
        assert a == b, step


def test_a_training_step_on_ct_volumes_is_finite_and_moves_the_ema():
    model = model_of(CT)
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    torch.manual_seed(8)
    out = model.training_step({"x": torch.rand(2, 1, 32, 32, 16)})
    assert torch.isfinite(out.loss) and out.loss > 0
    assert out.metrics["windows_level0"] > 0 and out.metrics["windows_level1"] > 0
    out.loss.backward()
    opt.step()
    model.after_optimizer_step(0, 60)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.target_encoder.parameters())]
    assert any(moved)


# ----------------------------------------------------------------------------- content targets, heads, VICReg

CONTENT = dataclasses.replace(POSE, fpn=FPNConfig(dim=64, fusion="add"), target_heads="none", target_centering=True,
                              variance_weight=1.0, covariance_weight=0.04)


@pytest.mark.parametrize(("edit", "message"), [
    ({"target_heads": "frozen"}, r"target_heads must be 'shared', 'ema' or 'none'"),
    ({"target_heads": "none"}, r"fpn\.dim 32 must equal embed_dim 64"),
    ({"variance_weight": -1.0}, r"variance_weight and covariance_weight must be >= 0"),
])
def test_invalid_content_settings_raise_value_error(edit, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(POSE, **edit)


def test_plain_target_heads_pool_the_target_tokens_and_train_only_the_prediction_heads():
    model = model_of(CONTENT)
    grid = torch.randn(2, *CONTENT.token_grid, CONTENT.embed_dim)
    valid = torch.ones(grid.shape[:4], dtype=torch.bool)
    for level, (features, _) in enumerate(model.hierarchy(grid, valid)):  # targets and embeddings: plain means
        expected, _ = pool_along_axis(grid, valid, CONTENT.pool_axis, 2 ** level)
        torch.testing.assert_close(features, expected)
    online = model.hierarchy(grid, valid, online=True)
    assert not torch.allclose(online[1][0], model.hierarchy(grid, valid)[1][0])  # projections + FPN
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.fpn.parameters()} <= trainable


def test_ema_target_heads_are_frozen_copies_moved_by_the_momentum_formula():
    model = model_of(dataclasses.replace(POSE, target_heads="ema"))
    for target, online in ((model.target_levels, model.levels), (model.target_fpn, model.fpn)):
        for a, b in zip(target.parameters(), online.parameters()):
            assert torch.equal(a, b) and not a.requires_grad
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in [*model.target_levels.parameters(), *model.target_fpn.parameters()]}
    sgd_step(model)
    online = {k: v.detach().clone() for k, v in model.fpn.named_parameters()}
    before = {k: v.detach().clone() for k, v in model.target_fpn.named_parameters()}
    m = model.momentum(10, 100)
    model.after_optimizer_step(10, 100)
    for name, param in model.target_fpn.named_parameters():
        torch.testing.assert_close(param, m * before[name] + (1 - m) * online[name], rtol=0, atol=1e-7)
    model.train()
    assert model.fpn.training and not model.target_fpn.training and not model.target_levels.training


def test_centred_targets_leave_nothing_for_a_position_only_prediction():
    torch.manual_seed(5)
    targets, offset = torch.randn(6, 96, 64), torch.randn(1, 96, 64)  # offset: anything a position alone implies
    centred = center_per_position(targets)
    torch.testing.assert_close(centred.mean(dim=0), torch.zeros(96, 64), rtol=0, atol=1e-6)
    torch.testing.assert_close(center_per_position(targets + offset), centred, rtol=0, atol=1e-5)
    model = model_of(dataclasses.replace(CONTENT, variance_weight=0.0, covariance_weight=0.0))
    seen = []
    loss_of = model.forward_loss
    model.forward_loss = lambda pred, target, valid: seen.append(target) or loss_of(pred, target, valid)
    out = model(torch.randn(6, 1, 64, 1, 72))
    grids = seen[0].view(6, CONTENT.num_target_blocks, -1, CONTENT.embed_dim)  # (B, M, N, D): one grid per block
    torch.testing.assert_close(grids[:, 0].mean(dim=0), torch.zeros(96, 64), rtol=0, atol=1e-6)
    torch.testing.assert_close(grids[:, 0], center_per_position(out.targets))


def test_vicreg_terms_see_only_what_the_input_changes_at_each_position():
    torch.manual_seed(0)
    b, n, d = 8, 10, 6
    ids = torch.stack([torch.randperm(n)[:7] for _ in range(b)])  # (B, K): positions differ per sample
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, -2:] = False  # padding never counts
    position = torch.randn(n, d) * 5.0
    pure_position = position[ids]  # (B, K, D): no content at all
    variance, _ = vicreg_terms(position_centred(pure_position, ids, valid, n))
    assert variance == pytest.approx(1.0, abs=0.02)  # positions alone do not meet the hinge
    content = torch.randn(b, 7, d) * 3.0
    variance, covariance = vicreg_terms(position_centred(pure_position + content, ids, valid, n))
    assert variance == 0.0  # content of std 3 meets the hinge everywhere
    correlated = content[..., :1].expand(-1, -1, d)  # every dimension the same content: high covariance
    _, covariance_corr = vicreg_terms(position_centred(pure_position + correlated, ids, valid, n))
    assert covariance_corr > 10 * covariance
    z = position_centred(pure_position + content, ids, valid, n)
    assert z.shape[0] <= int(valid.sum())


def test_vicreg_terms_enter_the_loss_with_their_weights():
    torch.manual_seed(7)
    x, plain = torch.randn(4, 1, 64, 1, 72), model_of(dataclasses.replace(CONTENT, variance_weight=0.0,
                                                                          covariance_weight=0.0))
    masks = plain.sample_masks(4)
    weighted = model_of(CONTENT)
    a, b = plain(x, masks), weighted(x, masks)
    torch.testing.assert_close(b.loss, a.loss + 1.0 * b.variance + 0.04 * b.covariance)
    metrics = weighted.training_step({"x": x}).metrics
    assert {"variance_term", "covariance_term"} <= set(metrics)
