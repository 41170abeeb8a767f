"""Reg2RG: region-guided report generation around a causal LM with LoRA (docs/design.md §4.4).

``forward`` takes the collator's batch (:mod:`strata.reg2rg.dataset`):

- ``vision_x``: ``{"image": ..., <region>: ...}``, either cached ViT tokens
  (``[B, N, dim]``, the token cache) or volumes (``[B, C, H, W, D]``, encoded here by the
  frozen :class:`~.mask_encoder.FrozenEncoders`, as the original does every step);
- ``mask_x``: ``{<region>: ...}``, cached mask features ``[B, mask_dim]`` or masks
  ``[B, 1, h, w, d]``;
- ``region2area`` [B, 10]: REGIONS index of prompt region k, -1 for unused slots;
- ``lang_x``, ``attention_mask``, ``labels`` [B, L].

The visual features enter through :class:`~.fusion.VisualFusion` as ``inputs_embeds``;
the LM computes the shifted cross-entropy over labels != -100. Trainable: the LoRA
adapters, the perceiver, ``proj``, ``mask_proj`` and the four marker rows; the LM, its
embeddings and the encoders are frozen.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from strata.ct.regions import REGIONS
from strata.models.reg2rg.fusion import VisualFusion
from strata.models.reg2rg.mask_encoder import FrozenEncoders, build_encoders
from strata.reg2rg.config import LLMConfig, LoraSettings, Reg2RGConfig
from strata.reg2rg.tokens import VisualTokenLayout


class Reg2RG(nn.Module):
    """The Reg2RG model.

    Args:
        lm: the causal LM wrapped by PEFT LoRA.
        fusion: perceiver, projections and marker rows.
        encoders: frozen encoders, or None when training from the token cache.
    """

    def __init__(self, *, lm: nn.Module, fusion: VisualFusion, encoders: FrozenEncoders | None) -> None:
        super().__init__()
        self.lm, self.fusion, self.encoders = lm, fusion, encoders
        self.layout = fusion.layout

    def _encode(self, vision_x: dict[str, Tensor], mask_x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Image tokens [B, N, dv], region tokens [B, 10, n, dv], mask features [B, 10, dm]."""
        image = vision_x["image"]
        regions = torch.stack([vision_x[r] for r in REGIONS], dim=1)
        masks = torch.stack([mask_x[r] for r in REGIONS], dim=1)
        if image.ndim == 5:  # volumes: run the frozen encoders (the original design)
            if self.encoders is None:
                raise ValueError("volumes given but the model has no encoders (built for the token cache)")
            b = image.shape[0]
            image = self.encoders.encode_volumes(image)
            regions = self.encoders.encode_volumes(regions.flatten(0, 1)).unflatten(0, (b, len(REGIONS)))
            masks = self.encoders.encode_masks(masks.flatten(0, 1)).unflatten(0, (b, len(REGIONS)))
        elif image.ndim != 3:
            raise ValueError(f"vision_x['image'] must be tokens [B, N, dim] or volumes [B, C, H, W, D], "
                             f"got {tuple(image.shape)}")
        return image, regions, masks

    def inputs_embeds(self, lang_x: Tensor, vision_x: dict[str, Tensor], mask_x: dict[str, Tensor],
                      region2area: Tensor, zero_visual: bool = False) -> Tensor:
        """``inputs_embeds`` [B, L, D]; ``zero_visual`` sets every visual token's feature to 0
        (the "does the model use the image" control)."""
        image, regions, masks = self._encode(vision_x, mask_x)
        dtype = self.fusion.proj.weight.dtype
        table = self.fusion.visual_table(image.to(dtype), regions.to(dtype), masks.to(dtype), region2area)
        if zero_visual:
            table = torch.zeros_like(table)
        return self.fusion.embed(lang_x, self.lm.get_input_embeddings(), table)

    def forward(self, lang_x: Tensor, vision_x: dict[str, Tensor], mask_x: dict[str, Tensor], region2area: Tensor,
                attention_mask: Tensor, labels: Tensor | None = None, region_present: Tensor | None = None,
                zero_visual: bool = False) -> dict[str, Tensor]:
        """Loss (mean over labelled tokens) and logits. ``region_present`` is informative
        only: absent regions are never listed in ``region2area``."""
        del region_present
        embeds = self.inputs_embeds(lang_x, vision_x, mask_x, region2area, zero_visual=zero_visual)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)
        return {"loss": out.loss, "logits": out.logits}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable weights only (what a checkpoint stores)."""
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def load_trainable_state_dict(self, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Copy a :meth:`trainable_state_dict` back in; its keys must be exactly the trainable ones."""
        trainable = {name: p for name, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(trainable) - set(weights)), sorted(set(weights) - set(trainable))
        if missing or unexpected:
            raise ValueError(f"{source}: not this model's trainable weights (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        for name, tensor in weights.items():
            if tensor.shape != trainable[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(trainable[name].shape)}")
            trainable[name].copy_(tensor)


# --------------------------------------------------------------------------- construction


def build_llm(cfg: LLMConfig, vocab_size: int, max_seq: int, dtype: torch.dtype) -> LlamaForCausalLM:
    """``from_pretrained`` on a local LLaMA (never downloads) or a tiny random ``LlamaConfig``."""
    if cfg.pretrained is not None:
        lm = LlamaForCausalLM.from_pretrained(str(cfg.pretrained), local_files_only=True, dtype=dtype)
    else:
        if cfg.tiny is None:
            raise ValueError("reg2rg.llm: set either pretrained or tiny")
        t = cfg.tiny
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads, intermediate_size=t.intermediate_size,
            max_position_embeddings=max_seq, initializer_range=t.initializer_range, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)).to(dtype)
    if lm.config.vocab_size != vocab_size:
        raise ValueError(f"language model vocabulary {lm.config.vocab_size} != tokenizer base vocabulary {vocab_size}")
    return lm


def wrap_lora(lm: nn.Module, cfg: LoraSettings, gradient_checkpointing: bool) -> nn.Module:
    """PEFT LoRA (bias none, causal LM); the base model is frozen by PEFT."""
    peft = get_peft_model(lm, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                         target_modules=list(cfg.target_modules), bias="none",
                                         task_type="CAUSAL_LM"))
    if gradient_checkpointing:
        peft.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    peft.enable_input_require_grads()  # inputs arrive as inputs_embeds
    return peft


def build_reg2rg(cfg: Reg2RGConfig, layout: VisualTokenLayout, seed: int, *, with_encoders: bool,
                 dtype: torch.dtype = torch.float32) -> Reg2RG:
    """The whole model; seeded, so equal arguments give equal weights.

    ``with_encoders=False`` builds it for the token cache (no ViT in memory). Published
    weights (``adapter_weights``, ``checkpoint``) are applied after initialisation.
    """
    from strata.models.reg2rg.weights import (
        load_adapter_weights,
        load_reg2rg_checkpoint,
        read_checkpoint,
    )

    checkpoint = read_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    encoders = build_encoders(cfg.encoder, seed, checkpoint) if with_encoders else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        lm = build_llm(cfg.llm, layout.base_vocab, cfg.data.max_seq, dtype)
        lm = wrap_lora(lm, cfg.lora, cfg.train.gradient_checkpointing)
        fusion = VisualFusion(vis_dim=cfg.encoder.vit.dim, mask_dim=cfg.encoder.mask.dim,
                              llm_dim=lm.config.hidden_size, perceiver=cfg.perceiver, layout=layout)
    model = Reg2RG(lm=lm, fusion=fusion, encoders=encoders)
    if cfg.adapter_weights is not None:
        load_adapter_weights(model, cfg.adapter_weights)
    if checkpoint is not None:
        load_reg2rg_checkpoint(model, checkpoint)
    return model
