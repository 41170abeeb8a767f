"""Hierarchical pose VAE (docs/design.md §4.3): shapes, masking, KL warm-up, chunk-local
attention, generation helpers, fused vs explicit attention, and that it can fit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from strata.models.pose_vae import BodyOutput, PoseVAE, PoseVAEConfig, frame_attention, overlap_add
from strata.models.registry import build_model
from strata.training.loop import parameter_groups

REPO = Path(__file__).resolve().parents[1]
F, L = 6, 5  # features, chunk length of the tiny test model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest and keeps timings stable on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = PoseVAEConfig(features=F, chunk_len=L, local_dim=16, global_dim=24, local_depth=2, global_depth=1,
                     decoder_global_depth=1, decoder_local_depth=2, local_heads=2, global_heads=2, mlp_ratio=2.0,
                     dropout=0.0, latent_dim=4, pooling="query", beta=0.5, kl_warmup_steps=10, free_bits=None)


def tiny(**changes: object) -> PoseVAEConfig:
    return dataclasses.replace(TINY, **changes)


def model(**changes: object) -> PoseVAE:
    torch.manual_seed(0)
    return PoseVAE(tiny(**changes)).eval()


def loss_of(m: PoseVAE, batch: dict[str, torch.Tensor], seed: int = 1) -> tuple[float, dict[str, float]]:
    torch.manual_seed(seed)  # same reparameterisation noise for both calls being compared
    out = m.training_step(batch)
    return float(out.loss.detach()), out.metrics


POOLINGS = ["mean", "query"]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("frames", [10, 13, 3, 1])
@pytest.mark.parametrize("window_layout", [True, False])
def test_shapes_keep_every_frame(pooling, frames, window_layout):
    m = model(pooling=pooling)
    shape = (2, frames, 1, F) if window_layout else (2, frames, F)
    x = torch.randn(shape)
    valid = torch.ones(shape, dtype=torch.uint8)
    out = m(x, valid)
    chunks = math.ceil(frames / L)
    assert out.recon.shape == (2, frames, F)  # padded to whole chunks, cropped back: never truncated
    assert out.posterior.mu.shape == out.posterior.logvar.shape == out.z.shape == (2, chunks, 4)
    assert out.posterior.frame_mask.shape == (2, chunks * L)
    assert int(out.posterior.frame_mask.sum()) == 2 * frames
    assert torch.isfinite(out.recon).all()
    step = m.training_step({"x": x, "valid": valid})
    assert step.loss.ndim == 0 and torch.isfinite(step.loss)
    assert set(step.metrics) == {"recon", "kl", "beta", "active_units"}


def test_invalid_arguments_raise_with_a_message():
    with pytest.raises(ValueError, match="local_dim 18 is not divisible by local_heads 4"):
        PoseVAE(tiny(local_dim=18, local_heads=4))
    with pytest.raises(ValueError, match="global_dim must be even"):
        PoseVAE(tiny(global_dim=15, global_heads=1))
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'query'"):
        PoseVAE(tiny(pooling="max"))
    with pytest.raises(ValueError, match="free_bits must be positive or None"):
        PoseVAE(tiny(free_bits=0.0))
    with pytest.raises(ValueError, match="chunk_len must be a positive integer"):
        PoseVAE(tiny(chunk_len=0))
    with pytest.raises(ValueError, match="output must be 'keypoints' or 'body'"):
        PoseVAE(tiny(output="angles"))
    with pytest.raises(ValueError, match="output 'body' needs features = agents x 12"):
        PoseVAE(tiny(output="body"))
    with pytest.raises(ValueError, match="chunk_overlap must be in"):
        PoseVAE(tiny(chunk_overlap=L + 1))
    m = model()
    with pytest.raises(ValueError, match="F = 6"):
        m(torch.randn(2, 10, 7))
    with pytest.raises(ValueError, match="frame_mask must be"):
        m(torch.randn(2, 10, F), frame_mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="need 2 chunks"):
        m.decode(torch.randn(1, 3, 4), num_frames=10)


@pytest.mark.parametrize("overlap", [0, 2])
@pytest.mark.parametrize("frames", [13, 3])
def test_body_output_and_chunk_overlap_keep_every_frame(overlap, frames):
    m = model(features=48, output="body", chunk_overlap=overlap, linear_chunk_path=True)  # 2 agents
    x = torch.randn(2, frames, 48)
    out = m(x)
    assert out.recon.shape == (2, frames, 48) and torch.isfinite(out.recon).all()
    assert m.sample_prior(3, frames).pose.shape == (3, frames, 48)
    assert {"body.template", "body.log_spread"} <= m.no_weight_decay()


def test_body_output_places_the_template_by_centre_and_heading():
    body = BodyOutput(24, span=8)  # one agent
    with torch.no_grad():
        body.template.copy_(torch.randn(1, 12, 2))
    params = torch.zeros(28)
    params[0:2] = torch.tensor([3.0, -1.0])  # centre
    params[2:4] = torch.tensor([-1.0, 2.0])  # + (1, 0): heading +y, a quarter turn to the left
    keypoints = body(params).reshape(12, 2)
    template = body.template[0].detach()  # (K, 2)
    rotated = torch.stack([-template[:, 1], template[:, 0]], -1)
    torch.testing.assert_close(keypoints, rotated + torch.tensor([3.0, -1.0]))
    params[4:] = 1e3  # the offsets are bounded by the learned spread, however large the input
    offset = body(params).reshape(12, 2) - keypoints
    assert torch.all(offset.norm(dim=-1) <= body.log_spread[0].exp().norm(dim=-1) + 1e-5)
    # smoothing keeps a cubic centre track and leaves the offsets alone
    t = torch.linspace(0.0, 1.0, 8)
    chunks = torch.randn(1, 1, 8, 28)
    chunks[..., 0] = 1 + t - 2 * t ** 3
    smooth = body.smooth(chunks)
    torch.testing.assert_close(smooth[..., 0], chunks[..., 0])
    torch.testing.assert_close(smooth[..., 4:], chunks[..., 4:])
    assert not torch.allclose(body.smooth(torch.randn(1, 1, 8, 28))[..., 1], chunks[..., 1])


def test_overlap_add_cross_fades_neighbouring_chunks():
    n, length, h = 3, 4, 1
    agree = torch.arange(n * length + 2 * h, dtype=torch.float32) - h  # each chunk predicts the frame index
    chunks = agree.unfold(0, length + 2 * h, length)[None, :, :, None]  # (1, N, L + 2h, 1)
    torch.testing.assert_close(overlap_add(chunks, length, h)[0, :, 0], torch.arange(12.0))
    steps = torch.arange(3.0)[None, :, None, None].expand(1, 3, 6, 1)  # chunk n predicts n everywhere
    faded = overlap_add(steps, length, h)[0, :, 0]
    torch.testing.assert_close(faded, torch.tensor([0, 0, 0, 0.25, 0.75, 1, 1, 1.25, 1.75, 2, 2, 2]))
    padded_chunk = overlap_add(steps, length, h, torch.tensor([[True, True, False]]))[0, :, 0]
    torch.testing.assert_close(padded_chunk[:9], torch.tensor([0, 0, 0, 0.25, 0.75, 1, 1, 1, 1]))  # chunk 2 ignored
    assert (padded_chunk[9:] == 0).all()  # frames only the padded chunk covers
    plain = torch.arange(3.0)[None, :, None, None].expand(1, 3, 4, 1)  # no overlap: chunks side by side
    torch.testing.assert_close(overlap_add(plain, length, 0)[0, :, 0], torch.arange(3.0).repeat_interleave(4))


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("overlap", [0, 2])
def test_padded_frames_affect_neither_loss_nor_real_outputs(pooling, linear, overlap):
    m = model(pooling=pooling, linear_chunk_path=linear, chunk_overlap=overlap)
    x = torch.randn(2, 17, F)  # 4 chunks; sample 0 is real for 8 frames (chunks 3 and 4 all padding)
    frame_mask = torch.ones(2, 17, dtype=torch.bool)
    frame_mask[0, 8:] = False
    batch = {"x": x, "valid": torch.ones_like(x, dtype=torch.uint8), "frame_mask": frame_mask}
    changed = x.clone()
    changed[0, 8:] = 1e3 * torch.randn(9, F)
    loss, metrics = loss_of(m, batch)
    loss2, metrics2 = loss_of(m, {**batch, "x": changed})
    assert loss == pytest.approx(loss2, rel=1e-6, abs=1e-7)
    assert metrics == pytest.approx(metrics2, rel=1e-6, abs=1e-7)

    a = m.reconstruct(x, frame_mask=frame_mask).recon
    b = m.reconstruct(changed, frame_mask=frame_mask).recon
    torch.testing.assert_close(a[0, :8], b[0, :8])
    torch.testing.assert_close(a[1], b[1])
    # the 8 real frames alone (2 chunks) decode exactly as inside the padded batch (4 chunks)
    alone = m.reconstruct(x[:1, :8]).recon
    torch.testing.assert_close(alone[0], a[0, :8], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("linear", [False, True])
def test_missing_keypoints_contribute_nothing_to_the_loss(linear):
    m = model(linear_chunk_path=linear)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 1, F, generator=g)
    valid = (torch.rand(3, 12, 1, F, generator=g) > 0.3).to(torch.uint8)
    changed = torch.where(valid.bool(), x, 50 * torch.randn(x.shape, generator=g))
    loss, metrics = loss_of(m, {"x": x, "valid": valid})
    loss2, metrics2 = loss_of(m, {"x": changed, "valid": valid})
    assert loss == pytest.approx(loss2, rel=1e-6)
    assert metrics["recon"] == pytest.approx(metrics2["recon"], rel=1e-6)
    # the reconstruction term is the squared error averaged over observed entries only
    torch.manual_seed(1)
    out = m(x, valid)
    mask = valid[:, :, 0].bool()
    expected = ((out.recon - x[:, :, 0])[mask] ** 2).mean()
    assert metrics["recon"] == pytest.approx(float(expected.detach()), rel=1e-5)


# --------------------------------------------------------------------------- KL warm-up


def test_kl_weight_ramps_with_the_optimizer_step_and_survives_state_dict(tmp_path):
    m = model(beta=0.5, kl_warmup_steps=10)
    x = torch.randn(4, 10, F)
    assert m.kl_weight() == 0.0
    assert loss_of(m, {"x": x})[1]["beta"] == 0.0
    loss, metrics = loss_of(m, {"x": x})
    assert loss == pytest.approx(metrics["recon"], rel=1e-6)  # beta 0: the loss is the reconstruction

    m.after_optimizer_step(3, 100)  # the 4th optimizer step has been taken
    assert m.kl_weight() == pytest.approx(0.5 * 4 / 10)
    loss, metrics = loss_of(m, {"x": x})
    assert loss == pytest.approx(metrics["recon"] + 0.2 * metrics["kl"], rel=1e-5)

    restored = model(beta=0.5, kl_warmup_steps=10)
    restored.load_state_dict(m.state_dict())
    assert int(restored.optimizer_steps) == 4 and restored.kl_weight() == m.kl_weight()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "model.safetensors"))
    from_disk = model(beta=0.5, kl_warmup_steps=10)
    from_disk.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert int(from_disk.optimizer_steps) == 4

    m.after_optimizer_step(9, 100)
    assert m.kl_weight() == 0.5
    m.after_optimizer_step(500, 1000)
    assert m.kl_weight() == 0.5
    assert model(beta=0.5, kl_warmup_steps=0).kl_weight() == 0.5  # no warm-up: beta from step 0


def test_free_bits_clamp_each_dimension_from_below():
    x = torch.randn(4, 10, F)
    plain = model(kl_warmup_steps=0, beta=1.0)
    clamped = model(kl_warmup_steps=0, beta=1.0, free_bits=100.0)  # far above any dimension's KL
    _, metrics = loss_of(plain, {"x": x})
    loss, metrics_clamped = loss_of(clamped, {"x": x})
    assert metrics_clamped["kl"] == pytest.approx(metrics["kl"], rel=1e-6)  # logged KL is the raw one
    assert loss == pytest.approx(metrics["recon"] + 4 * 100.0, rel=1e-6)  # 4 latent dims x 100 nats


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    m = model()
    with torch.no_grad():
        m.heads.mu.weight.zero_()
        m.heads.mu.bias.zero_()
        m.heads.mu.weight[1, 0] = 100.0  # only unit 1 depends on the input
    _, metrics = loss_of(m, {"x": torch.randn(4, 10, F)})
    assert metrics["active_units"] == 1.0


# --------------------------------------------------------------------------- locality


def capture_output(module: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(out[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("pooling", POOLINGS)
def test_local_attention_never_spans_two_chunks(pooling):
    m = model(pooling=pooling)
    x = torch.randn(2, 4 * L, F)
    seen, handle = capture_output(m.chunk_encoder)
    m.encode(x)
    perturbed = x.clone()
    j = 2
    perturbed[:, j * L:(j + 1) * L] += 5 * torch.randn(2, L, F)
    m.encode(perturbed)
    handle.remove()
    before, after = (t.reshape(2, 4, *t.shape[1:]) for t in seen)  # (B, N, S, D)
    changed = (before - after).abs().amax(dim=(0, 2, 3))  # per chunk
    assert changed[j] > 1e-3
    assert torch.all(changed[[0, 1, 3]] == 0)  # bit-identical outside chunk j

    # the local decoder too: chunk conditioning j only reaches the frames of chunk j
    condition = torch.randn(4, 24)
    out, _ = m.chunk_decoder(condition, None, False)
    condition[j] += 1.0
    out2, _ = m.chunk_decoder(condition, None, False)
    diff = (out - out2).abs().amax(dim=(1, 2))
    assert diff[j] > 1e-4 and torch.all(diff[[0, 1, 3]] == 0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_attention_maps_are_accessible_and_block_diagonal(pooling):
    m = model(pooling=pooling)
    frames = 3 * L + 2  # 4 chunks, the last one padded
    out = m.reconstruct(torch.randn(2, frames, F), return_attention=True)
    maps = out.attention
    s = L + (pooling == "query")
    assert [a.shape for a in maps.encoder_local] == [(2, 4, 2, s, s)] * 2
    assert [a.shape for a in maps.encoder_global] == [(2, 2, 4, 4)]
    assert [a.shape for a in maps.decoder_global] == [(2, 2, 4, 4)]
    assert [a.shape for a in maps.decoder_local] == [(2, 4, 2, L, L)] * 2
    for a in maps.encoder_local + maps.encoder_global + maps.decoder_global + maps.decoder_local:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # padded frames of the last chunk receive no attention from real frames
    last = maps.decoder_local[0][:, 3]  # (B, h, L, L)
    assert torch.all(last[:, :, :2, 2:] == 0)

    full = frame_attention(maps.encoder_local[0], L)  # (B, h, N*L, N*L)
    assert full.shape == (2, 2, 4 * L, 4 * L)
    chunk_of = torch.arange(4 * L) // L
    off_block = chunk_of[:, None] != chunk_of[None, :]
    assert torch.all(full[..., off_block] == 0)
    torch.testing.assert_close(full[:, :, L:2 * L, L:2 * L], maps.encoder_local[0][:, 1, :, -L:, -L:])


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("padded", [False, True])
def test_explicit_and_fused_attention_agree(pooling, padded):
    m = model(pooling=pooling)
    x = torch.randn(2, 13 if padded else 15, F)
    frame_mask = None
    if padded:
        frame_mask = torch.ones(2, 13, dtype=torch.bool)
        frame_mask[1, 4:] = False
    fused = m.reconstruct(x, frame_mask=frame_mask)
    explicit = m.reconstruct(x, frame_mask=frame_mask, return_attention=True)
    assert fused.attention is None and explicit.attention is not None
    torch.testing.assert_close(explicit.recon, fused.recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit.posterior.mu, fused.posterior.mu, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- generation


def test_prior_samples_are_seeded_and_shaped():
    m = model()
    a = m.sample_prior(3, 12, generator=torch.Generator().manual_seed(7))
    b = m.sample_prior(3, 12, generator=torch.Generator().manual_seed(7))
    c = m.sample_prior(3, 12, generator=torch.Generator().manual_seed(8))
    assert a.pose.shape == (3, 12, F) and a.z.shape == (3, 3, 4)
    torch.testing.assert_close(a.pose, b.pose, rtol=0, atol=0)
    assert not torch.allclose(a.pose, c.pose)
    with_maps = m.sample_prior(3, 12, generator=torch.Generator().manual_seed(7), return_attention=True)
    assert with_maps.attention.encoder_local == [] and len(with_maps.attention.decoder_local) == 2
    torch.testing.assert_close(with_maps.pose, a.pose, rtol=1e-5, atol=1e-5)


def test_interpolation_runs_from_one_latent_to_the_other():
    m = model()
    post = m.encode(torch.randn(2, 10, F))
    path = PoseVAE.interpolate(post.mu[0], post.mu[1], 5)
    assert path.shape == (5, 2, 4)
    torch.testing.assert_close(path[0], post.mu[0])
    torch.testing.assert_close(path[-1], post.mu[1])
    torch.testing.assert_close(path[2], (post.mu[0] + post.mu[1]) / 2)
    decoded = m.decode(path, num_frames=10)
    assert decoded.pose.shape == (5, 10, F)
    torch.testing.assert_close(decoded.pose[0], m.decode(post.mu[:1], num_frames=10).pose[0])


# --------------------------------------------------------------------------- config and fitting


def test_shipped_demo_architecture_builds_and_trains_one_step():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    run = raw["models"]["posevae"]["pose"]
    torch.manual_seed(0)
    m = build_model("posevae", run["architecture"])
    assert dataclasses.asdict(m.config) == run["architecture"]
    window = raw["preprocess"]["pose"]["window"]
    batch = {"x": torch.randn(2, window, 1, m.config.features),
             "valid": torch.ones(2, window, 1, m.config.features, dtype=torch.uint8)}
    out = m.train().training_step(batch)
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_a_few_hundred_adam_steps_fit_well_below_the_mean_pose():
    torch.manual_seed(0)
    m = PoseVAE(tiny(features=F, chunk_len=10, local_dim=32, global_dim=32, local_depth=1, decoder_local_depth=1,
                     latent_dim=8, beta=1e-3, kl_warmup_steps=0))
    g = torch.Generator().manual_seed(0)
    t = torch.arange(40.0)
    period = 8 + 16 * torch.rand(8, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(8, 1, F, generator=g)
    x = torch.sin(2 * math.pi * t[None, :, None] / period + phase)  # (8, 40, F): per-sequence rhythms
    mean_pose_loss = float(((x - x.mean(1, keepdim=True)) ** 2).mean())
    optimizer = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for step in range(300):
        out = m.training_step({"x": x})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        m.after_optimizer_step(step, 300)
    recon = float(((m.eval().reconstruct(x).recon - x) ** 2).mean())
    assert recon < 0.5 * mean_pose_loss, (recon, mean_pose_loss)


def test_summary_token_is_not_weight_decayed():
    m = model(pooling="query")
    decay, no_decay = parameter_groups(m, 0.05)
    assert any(p is m.pooling.query for p in no_decay["params"])
    assert not any(p is m.pooling.query for p in decay["params"])
    assert model(pooling="mean").no_weight_decay() == set()
