"""Reg2RG components: ViT-3D, perceiver, token layout, fusion, trainable set, published weights."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from test_reg2rg_support import demo_config

from strata.models.reg2rg import PerceiverResampler, ViT3D, build_reg2rg
from strata.models.reg2rg.weights import (
    WeightsError,
    load_adapter_weights,
    load_encoder_weights,
    load_reg2rg_checkpoint,
)
from strata.reg2rg.config import PerceiverConfig, ViT3DConfig
from strata.reg2rg.dataset import (
    Reg2RGCollator,
    Reg2RGDataset,
    TokenCacheSource,
    VolumeSource,
    study_sentences,
)
from strata.reg2rg.tokens import VisualTokenLayout

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture

FULL_VIT = ViT3DConfig(in_channels=3, patch_size=(32, 32, 4), pos_grid=(16, 16, 128), dim=768, depth=12, heads=8,
                       head_dim=64, mlp_dim=2048)
FULL_MASK = ViT3DConfig(in_channels=1, patch_size=(32, 32, 16), pos_grid=(8, 8, 4), dim=255, depth=3, heads=8,
                        head_dim=64, mlp_dim=512)


def test_full_vit3d_shapes_and_parameter_count():
    with torch.device("meta"):
        vit = ViT3D(FULL_VIT)
        tokens, _ = vit(torch.empty(1, 3, 256, 256, 64))
        mask = ViT3D(FULL_MASK)
        mask_tokens, _ = mask(torch.empty(1, 1, 256, 256, 64))
    assert tuple(tokens.shape) == (1, 1024, 768)
    assert sum(p.numel() for p in vit.parameters()) == 66_208_000  # docs/design.md §4.4: 66.2 M
    assert tuple(mask_tokens.shape) == (1, 256, 255)


def test_patchify_is_the_documented_rearrange_and_positions_are_strided():
    cfg = ViT3DConfig(in_channels=2, patch_size=(4, 4, 2), pos_grid=(4, 4, 8), dim=12, depth=1, heads=2, head_dim=4,
                      mlp_dim=8)
    vit = ViT3D(cfg)
    x = torch.randn(1, 2, 8, 8, 4)
    patches = vit.patchify(x)
    assert torch.equal(patches, rearrange(x, "b c (h p1) (w p2) (d pd) -> b (h w d) (p1 p2 pd c)", p1=4, p2=4, pd=2))
    # token (h=1, w=0, d=1) holds voxels x[:, :, 4:8, 0:4, 2:4] with the channel fastest
    assert torch.equal(patches[0, 1 * 2 * 2 + 0 * 2 + 1], x[0, :, 4:8, 0:4, 2:4].permute(1, 2, 3, 0).reshape(-1))
    pos = vit.pos_embed((2, 2, 2))  # tables 4, 4, 8 -> rows 1, 3 / 1, 3 / 3, 7
    expected = torch.cat([vit.pos_embed.height.weight[1], vit.pos_embed.width.weight[3],
                          vit.pos_embed.depth.weight[7]])
    assert torch.equal(pos[0 * 4 + 1 * 2 + 1], expected)


def test_vit3d_rejects_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="divisible by 3"):
        ViT3D(ViT3DConfig(in_channels=1, patch_size=(4, 4, 4), pos_grid=(2, 2, 2), dim=16, depth=1, heads=2,
                          head_dim=8, mlp_dim=8))
    vit = ViT3D(ViT3DConfig(in_channels=1, patch_size=(4, 4, 4), pos_grid=(2, 2, 2), dim=12, depth=1, heads=2,
                            head_dim=4, mlp_dim=8))
    with pytest.raises(ValueError, match="axis D"):
        vit(torch.zeros(1, 1, 8, 8, 6))
    with pytest.raises(ValueError, match="does not fit the position tables"):
        vit(torch.zeros(1, 1, 12, 8, 8))


def test_vit3d_explicit_attention_path_equals_fused_and_returns_probabilities():
    torch.manual_seed(0)
    vit = ViT3D(ViT3DConfig(in_channels=1, patch_size=(4, 4, 2), pos_grid=(2, 2, 4), dim=24, depth=2, heads=4,
                            head_dim=8, mlp_dim=32)).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    fused, none = vit(x)
    explicit, attns = vit(x, return_attention=True)
    assert none == [] and len(attns) == 2 and tuple(attns[0].shape) == (2, 4, 16, 16)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attns[1].sum(-1), torch.ones(2, 4, 16))


def test_perceiver_resamples_any_token_count_to_its_latents():
    perceiver = PerceiverResampler(dim=24, cfg=PerceiverConfig(num_latents=5, depth=2, heads=2, head_dim=8, ff_mult=2))
    for n in (1, 7, 40):
        assert tuple(perceiver(torch.randn(3, n, 24)).shape) == (3, 5, 24)


def test_region_tokens_never_share_an_id():
    layout = VisualTokenLayout(base_vocab=32000)
    owned = [{layout.region_id(k, j) for j in range(33)} for k in range(10)]
    assert all(len(ids) == 33 for ids in owned)
    assert len(set().union(*owned)) == 330  # disjoint
    for k in range(10):  # region k owns <region{33k}>..<region{33k+32}>, contiguous ids
        names = layout.region_text(k).replace("><", "> <").split()
        assert names[0] == f"<region{33 * k}>" and names[-1] == f"<region{33 * k + 32}>"
        assert sorted(owned[k]) == list(range(layout.region_id(k, 0), layout.region_id(k, 0) + 33))
    specials = layout.special_tokens()
    assert len(specials) == len(set(specials)) == 366 and layout.size == 32366
    assert layout.region_id(0, 0) == 32000 + 4 + 32


def test_tokenizer_gives_the_layout_ids(fake_cache):
    tok, layout = fake_cache["tokenizer"], fake_cache["layout"]
    ids = tok(f"x <image> <image5> {layout.region_text(2)}", add_special_tokens=False)["input_ids"]
    assert layout.marker_id("<image>") in ids and layout.image_id(5) in ids
    assert [i for i in ids if i >= layout.region_id(0, 0)] == [layout.region_id(2, j) for j in range(33)]


def _dataset(fc, source="tokens", train=True):
    src = TokenCacheSource(fc["tokens"]) if source == "tokens" else VolumeSource(fc["studies"])
    import pandas as pd
    return Reg2RGDataset(study_ids=fc["ids"], sentences=study_sentences(pd.read_parquet(fc["reports"])), source=src,
                         tokenizer=fc["tokenizer"], layout=fc["layout"], cfg=fc["cfg"].data, seed=1, train=train)


@pytest.fixture(scope="module")
def model(fake_cache):
    return build_reg2rg(fake_cache["cfg"], fake_cache["layout"], 1234, with_encoders=True)


def test_trainable_parameters_are_lora_perceiver_projections_and_new_rows(model, fake_cache):
    cfg = fake_cache["cfg"]
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    lora = [n for n in names if n.startswith("lm.")]
    assert len(lora) == cfg.llm.tiny.num_layers * 4 * 2  # q/k/v/o x (A, B) per layer
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in lora)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    rest = [n for n in names if not n.startswith("lm.")]
    assert all(n.startswith(("fusion.perceiver.", "fusion.proj.", "fusion.mask_proj.", "fusion.marker_embed."))
               for n in rest)
    assert {"fusion.proj.weight", "fusion.mask_proj.weight", "fusion.marker_embed.weight",
            "fusion.perceiver.latents"} <= set(rest)
    assert len(rest) == 1 + 11 * cfg.perceiver.depth + 2 + 2 + 2 + 1  # latents, layers, norm, proj, mask_proj, rows
    assert model.fusion.marker_embed.weight.shape[0] == 4
    assert not any(p.requires_grad for p in model.encoders.parameters())
    h, r = cfg.llm.tiny.hidden_size, cfg.lora.r
    n_lora = cfg.llm.tiny.num_layers * 4 * 2 * h * r
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")) == n_lora


def test_visual_features_land_on_their_token_positions_and_frozen_rows_get_no_gradient(model, fake_cache):
    layout = fake_cache["layout"]
    batch = Reg2RGCollator(0)([_dataset(fake_cache)[i] for i in range(2)])
    image, regions, masks = model._encode(batch["vision_x"], batch["mask_x"])
    table = model.fusion.visual_table(image, regions, masks, batch["region2area"])
    embeds = model.inputs_embeds(batch["lang_x"], batch["vision_x"], batch["mask_x"], batch["region2area"])
    ids = batch["lang_x"]
    for b in range(2):
        for k in range(int((batch["region2area"][b] >= 0).sum())):
            pos = (ids[b] == layout.region_id(k, 32)).nonzero()[0, 0]  # geometry token of prompt region k
            area = int(batch["region2area"][b, k])
            geometry = model.fusion.mask_proj(masks[b, area])
            torch.testing.assert_close(embeds[b, pos], geometry)
            torch.testing.assert_close(embeds[b, pos], table[b, layout.image_tokens + k * 33 + 32])
        pos = (ids[b] == layout.image_id(3)).nonzero()[0, 0]
        torch.testing.assert_close(embeds[b, pos], table[b, 3])
        text = (ids[b] < layout.base_vocab) & (batch["attention_mask"][b] > 0)
        torch.testing.assert_close(embeds[b, text], model.lm.get_input_embeddings().weight[ids[b, text]])
    model.zero_grad()
    model(**batch)["loss"].backward()
    assert model.lm.get_input_embeddings().weight.grad is None
    assert model.lm.get_input_embeddings().weight.requires_grad is False
    assert model.fusion.marker_embed.weight.grad.abs().sum(dim=1).gt(0).all()  # all four markers are used
    assert model.fusion.perceiver.latents.grad.abs().sum() > 0
    assert model.fusion.mask_proj.weight.grad.abs().sum() > 0


def test_token_cache_and_volumes_give_the_same_loss(model, fake_cache):
    model.eval()
    with torch.no_grad():
        cached = model(**Reg2RGCollator(0)([_dataset(fake_cache, "tokens")[0]]))["loss"]
        volumes = model(**Reg2RGCollator(0)([_dataset(fake_cache, "volumes")[0]]))["loss"]
    model.train()
    torch.testing.assert_close(cached, volumes, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(fake_cache):
    batch = Reg2RGCollator(0)([_dataset(fake_cache)[1]])
    grads = []
    for checkpointing in (False, True):
        cfg = demo_config(train__gradient_checkpointing=checkpointing, lora__dropout=0.0)
        m = build_reg2rg(cfg, fake_cache["layout"], 1234, with_encoders=False)
        m.train()
        m(**batch)["loss"].backward()
        grads.append(m.lm.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- published weights


def _upstream_vit(cfg: ViT3DConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict with RadFM's ``ViT`` key names and shapes (src/Model/vit_3d.py)."""
    patch_dim = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    inner, d = cfg.heads * cfg.head_dim, cfg.dim
    shapes = {"to_patch_embedding.1.weight": (patch_dim,), "to_patch_embedding.1.bias": (patch_dim,),
              "to_patch_embedding.2.weight": (d, patch_dim), "to_patch_embedding.2.bias": (d,),
              "to_patch_embedding.3.weight": (d,), "to_patch_embedding.3.bias": (d,),
              "pos_embedding.row_embed.weight": (cfg.pos_grid[0], d // 3),
              "pos_embedding.col_embed.weight": (cfg.pos_grid[1], d // 3),
              "pos_embedding.dep_embed.weight": (cfg.pos_grid[2], d // 3)}
    for i in range(cfg.depth):
        p = f"transformer.layers.{i}."
        shapes.update({p + "0.norm.weight": (d,), p + "0.norm.bias": (d,), p + "0.fn.to_qkv.weight": (3 * inner, d),
                       p + "0.fn.to_out.0.weight": (d, inner), p + "0.fn.to_out.0.bias": (d,),
                       p + "1.norm.weight": (d,), p + "1.norm.bias": (d,),
                       p + "1.fn.net.0.weight": (cfg.mlp_dim, d), p + "1.fn.net.0.bias": (cfg.mlp_dim,),
                       p + "1.fn.net.3.weight": (d, cfg.mlp_dim), p + "1.fn.net.3.bias": (d,)})
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def _upstream_perceiver(dim: int, cfg: PerceiverConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Flamingo/RadFM ``PerceiverResampler`` names (src/Model/helpers.py)."""
    inner = cfg.heads * cfg.head_dim
    shapes = {"latents": (cfg.num_latents, dim), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(cfg.depth):
        p = f"layers.{i}."
        shapes.update({p + "0.norm_media.weight": (dim,), p + "0.norm_media.bias": (dim,),
                       p + "0.norm_latents.weight": (dim,), p + "0.norm_latents.bias": (dim,),
                       p + "0.to_q.weight": (inner, dim), p + "0.to_kv.weight": (2 * inner, dim),
                       p + "0.to_out.weight": (dim, inner), p + "1.0.weight": (dim,), p + "1.0.bias": (dim,),
                       p + "1.1.weight": (dim * cfg.ff_mult, dim), p + "1.3.weight": (dim, dim * cfg.ff_mult)})
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_published_radfm_and_reg2rg_weights_load_through_the_key_mapping(tmp_path, fake_cache):
    cfg, layout = fake_cache["cfg"], fake_cache["layout"]
    gen = torch.Generator().manual_seed(3)
    model = build_reg2rg(cfg, layout, 1234, with_encoders=True)
    vit = _upstream_vit(cfg.encoder.vit, gen)
    torch.save(vit, tmp_path / "RadFM_vit3d.pth")
    load_encoder_weights(model.encoders, tmp_path / "RadFM_vit3d.pth", None)
    blk = model.encoders.vit.blocks[1]
    assert torch.equal(blk.attn.qkv.weight, vit["transformer.layers.1.0.fn.to_qkv.weight"])
    assert torch.equal(blk.attn.proj.bias, vit["transformer.layers.1.0.fn.to_out.0.bias"])
    assert torch.equal(blk.mlp.fc2.weight, vit["transformer.layers.1.1.fn.net.3.weight"])
    assert torch.equal(model.encoders.vit.patch_proj.weight, vit["to_patch_embedding.2.weight"])
    assert torch.equal(model.encoders.vit.pos_embed.depth.weight, vit["pos_embedding.dep_embed.weight"])

    dim, width = cfg.encoder.vit.dim, cfg.llm.tiny.hidden_size
    perceiver = _upstream_perceiver(dim, cfg.perceiver, gen)
    fc_other_width = {"weight": torch.randn(5120, dim, generator=gen), "bias": torch.randn(5120, generator=gen)}
    torch.save({"perceiver": perceiver, "fc": fc_other_width}, tmp_path / "RadFM_perceiver_fc.pth")
    skipped = load_adapter_weights(model, tmp_path / "RadFM_perceiver_fc.pth")
    assert skipped == [f"fc (5120, {dim})"]
    assert torch.equal(model.fusion.perceiver.layers[0].attn.to_kv.weight, perceiver["layers.0.0.to_kv.weight"])
    assert torch.equal(model.fusion.perceiver.layers[0].ff.fc1.weight, perceiver["layers.0.1.1.weight"])

    ckpt = {f"embedding_layer.vision_encoder.{k}": v for k, v in _upstream_vit(cfg.encoder.vit, gen).items()}
    ckpt |= {f"embedding_layer.mask_encoder.{k}": v for k, v in _upstream_vit(cfg.encoder.mask, gen).items()}
    ckpt |= {f"embedding_layer.perceiver.{k}": v for k, v in _upstream_perceiver(dim, cfg.perceiver, gen).items()}
    ckpt |= {"embedding_layer.fc.weight": torch.randn(width, dim, generator=gen),
             "embedding_layer.fc.bias": torch.randn(width, generator=gen),
             "embedding_layer.mask_fc.weight": torch.randn(width, cfg.encoder.mask.dim, generator=gen),
             "embedding_layer.mask_fc.bias": torch.randn(width, generator=gen),
             "embedding_layer.image_token_weight": torch.randn(2, width, generator=gen),
             "embedding_layer.region_token_weight": torch.randn(2, width, generator=gen),
             "embedding_layer.weight": torch.randn(layout.base_vocab, width, generator=gen)}
    lm_prefix = "lang_model.base_model.model.model.layers.0.self_attn."
    ckpt |= {lm_prefix + "q_proj.lora_A.default.weight": torch.randn(cfg.lora.r, width, generator=gen),
             lm_prefix + "v_proj.lora_B.default.weight": torch.randn(width, cfg.lora.r, generator=gen),
             lm_prefix + "q_proj.weight": torch.randn(width, width, generator=gen)}
    torch.save(ckpt, tmp_path / "pytorch_model.bin")
    from strata.models.reg2rg.weights import read_checkpoint
    loaded = read_checkpoint(tmp_path / "pytorch_model.bin")
    load_encoder_weights(model.encoders, None, loaded)
    report = load_reg2rg_checkpoint(model, loaded)
    assert torch.equal(model.encoders.mask.blocks[0].attn.qkv.weight,
                       ckpt["embedding_layer.mask_encoder.transformer.layers.0.0.fn.to_qkv.weight"])
    assert torch.equal(model.fusion.mask_proj.weight, ckpt["embedding_layer.mask_fc.weight"])
    assert torch.equal(model.fusion.marker_embed.weight[2:], ckpt["embedding_layer.region_token_weight"])
    attn = model.lm.base_model.model.model.layers[0].self_attn
    assert torch.equal(attn.q_proj.lora_A.default.weight, ckpt[lm_prefix + "q_proj.lora_A.default.weight"])
    assert torch.equal(attn.v_proj.lora_B.default.weight, ckpt[lm_prefix + "v_proj.lora_B.default.weight"])
    assert set(report["ignored"]) == {"embedding_layer.weight", lm_prefix + "q_proj.weight"}

    bad = dict(vit)
    bad["transformer.layers.0.0.fn.to_qkv.weight"] = torch.zeros(5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="to_qkv|qkv"):
        load_encoder_weights(model.encoders, tmp_path / "bad.pth", None)


def test_weights_are_read_without_executing_pickled_code(tmp_path, fake_cache):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    model = build_reg2rg(fake_cache["cfg"], fake_cache["layout"], 1234, with_encoders=True)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_encoder_weights(model.encoders, tmp_path / "evil.pth", None)
