"""Published RadFM / Reg2RG weights onto the strata modules (read with ``weights_only=True``).

Upstream files (zhi-xuan-chen/Reg2RG, RadFM):

- ``RadFM_vit3d.pth``: the ViT-3D state dict (``src/Model/vit_3d.py``: ``ViT``);
- ``RadFM_perceiver_fc.pth``: ``{"perceiver": state dict, "fc": state dict}``
  (``helpers.py``: ``PerceiverResampler``; RadFM's ``fc`` maps 768 -> 5120, the width of
  its LLM, so it is used only if it fits the configured LLM width, as Reg2RG does not);
- Reg2RG ``pytorch_model.bin``: the whole ``Reg2RG`` module: ``embedding_layer.*``
  (``vision_encoder``, ``mask_encoder``, ``perceiver``, ``fc``, ``mask_fc``,
  ``image_token_weight`` [2, D], ``region_token_weight`` [2, D], ``weight`` = the LLaMA
  embedding) and ``lang_model.base_model.model.*`` (LLaMA + PEFT LoRA).

Key mapping (upstream -> strata):

====================================================  =======================================
``to_patch_embedding.{1,2,3}.*``                      ``patch_norm_in``, ``patch_proj``, ``patch_norm_out``
``pos_embedding.{row,col,dep}_embed.weight``          ``pos_embed.{height,width,depth}.weight``
``transformer.layers.{i}.0.norm.*``                   ``blocks.{i}.norm1.*``
``transformer.layers.{i}.0.fn.to_qkv.weight``         ``blocks.{i}.attn.qkv.weight``
``transformer.layers.{i}.0.fn.to_out.0.*``            ``blocks.{i}.attn.proj.*``
``transformer.layers.{i}.1.norm.*``                   ``blocks.{i}.norm2.*``
``transformer.layers.{i}.1.fn.net.{0,3}.*``           ``blocks.{i}.mlp.{fc1,fc2}.*``
perceiver ``latents``, ``norm.*``                     ``fusion.perceiver.latents``, ``.norm.*``
perceiver ``layers.{i}.0.{norm_media,norm_latents,to_q,to_kv,to_out}.*``   ``layers.{i}.attn.*``
perceiver ``layers.{i}.1.{0,1,3}.*``                  ``layers.{i}.ff.{norm,fc1,fc2}.*``
``embedding_layer.vision_encoder.*``                  ``encoders.vit.*`` (ViT mapping)
``embedding_layer.mask_encoder.*``                    ``encoders.mask.*`` (ViT mapping)
``embedding_layer.fc.*``, ``mask_fc.*``               ``fusion.proj.*``, ``fusion.mask_proj.*``
``embedding_layer.{image,region}_token_weight``       ``fusion.marker_embed.weight`` rows 0-1, 2-3
``lang_model.base_model.model.*lora_{A,B}.default.*``  ``lm.base_model.model.*`` (same sub-keys)
``lang_model.*`` (other), ``embedding_layer.weight``  not loaded: the frozen LLaMA comes from
                                                      ``reg2rg.llm.pretrained``
====================================================  =======================================

Upstream's LoRA config named no target modules, so PEFT's LLaMA default (q_proj, v_proj)
applied: a Reg2RG checkpoint fills q/v adapters and k/o adapters keep their zero B.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

_VIT_RULES = [
    (r"^to_patch_embedding\.1\.", "patch_norm_in."),
    (r"^to_patch_embedding\.2\.", "patch_proj."),
    (r"^to_patch_embedding\.3\.", "patch_norm_out."),
    (r"^pos_embedding\.row_embed\.", "pos_embed.height."),
    (r"^pos_embedding\.col_embed\.", "pos_embed.width."),
    (r"^pos_embedding\.dep_embed\.", "pos_embed.depth."),
    (r"^transformer\.layers\.(\d+)\.0\.norm\.", r"blocks.\1.norm1."),
    (r"^transformer\.layers\.(\d+)\.0\.fn\.to_qkv\.", r"blocks.\1.attn.qkv."),
    (r"^transformer\.layers\.(\d+)\.0\.fn\.to_out\.0\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.layers\.(\d+)\.1\.norm\.", r"blocks.\1.norm2."),
    (r"^transformer\.layers\.(\d+)\.1\.fn\.net\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.layers\.(\d+)\.1\.fn\.net\.3\.", r"blocks.\1.mlp.fc2."),
]
_PERCEIVER_RULES = [
    (r"^latents$", "latents"),
    (r"^norm\.", "norm."),
    (r"^layers\.(\d+)\.0\.(norm_media|norm_latents|to_q|to_kv|to_out)\.", r"layers.\1.attn.\2."),
    (r"^layers\.(\d+)\.1\.0\.", r"layers.\1.ff.norm."),
    (r"^layers\.(\d+)\.1\.1\.", r"layers.\1.ff.fc1."),
    (r"^layers\.(\d+)\.1\.3\.", r"layers.\1.ff.fc2."),
]


class WeightsError(ValueError):
    """A weight file does not match the configured modules."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` without executing pickled code (tensors and plain containers only)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read weights ({err})") from err


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def map_vit(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """RadFM ``ViT`` keys -> :class:`~.vit3d.ViT3D` keys; an unknown key is an error."""
    out = {}
    for key, value in state.items():
        new = _rename(key, _VIT_RULES)
        if new is None:
            raise WeightsError(f"{source}: unexpected ViT key {key!r}")
        out[new] = value
    return out


def map_perceiver(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Flamingo/RadFM ``PerceiverResampler`` keys -> :class:`~.perceiver.PerceiverResampler` keys."""
    out = {}
    for key, value in state.items():
        new = _rename(key, _PERCEIVER_RULES)
        if new is None:
            raise WeightsError(f"{source}: unexpected perceiver key {key!r}")
        out[new] = value
    return out


def assign(module: nn.Module, state: dict[str, Tensor], source: str, *, complete: bool) -> None:
    """Copy ``state`` into ``module`` checking every name and shape; ``complete`` demands
    that every parameter of ``module`` is covered."""
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise WeightsError(f"{source}: keys without a target: {unknown[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    if complete and set(own) - set(state):
        raise WeightsError(f"{source}: missing {sorted(set(own) - set(state))[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def load_encoder_weights(encoders: nn.Module, vit_weights: Path | None, checkpoint: dict[str, Any] | None) -> None:
    """RadFM ViT weights, then (if given) the Reg2RG checkpoint's encoders."""
    if vit_weights is not None:
        assign(encoders.vit, map_vit(read_checkpoint(vit_weights), str(vit_weights)), str(vit_weights), complete=True)
    if checkpoint is not None:
        for upstream, target in (("vision_encoder", encoders.vit), ("mask_encoder", encoders.mask)):
            prefix = f"embedding_layer.{upstream}."
            part = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
            if part:
                assign(target, map_vit(part, f"checkpoint {upstream}"), f"checkpoint {upstream}", complete=True)


def load_adapter_weights(model: nn.Module, path: Path) -> list[str]:
    """RadFM ``RadFM_perceiver_fc.pth``; returns what was skipped (``fc`` of another width)."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "perceiver" not in state:
        raise WeightsError(f"{path}: expected a dict with a 'perceiver' state dict")
    assign(model.fusion.perceiver, map_perceiver(state["perceiver"], str(path)), str(path), complete=True)
    skipped = []
    fc = state.get("fc")
    if fc is not None:
        if tuple(fc["weight"].shape) == tuple(model.fusion.proj.weight.shape):
            assign(model.fusion.proj, dict(fc), f"{path} fc", complete=True)
        else:
            skipped.append(f"fc {tuple(fc['weight'].shape)}")
    return skipped


def load_reg2rg_checkpoint(model: nn.Module, checkpoint: dict[str, Any]) -> dict[str, list[str]]:
    """The trainable parts of a Reg2RG ``pytorch_model.bin`` (encoders: :func:`load_encoder_weights`).

    Returns the loaded strata keys and the upstream keys deliberately not loaded.
    """
    fusion, loaded = {}, []
    prefix = "embedding_layer."
    encoders = (prefix + "vision_encoder.", prefix + "mask_encoder.", prefix + "perceiver.")
    for key, value in checkpoint.items():
        if key in (prefix + "fc.weight", prefix + "fc.bias"):
            fusion["proj." + key.rsplit(".", 1)[1]] = value
        elif key in (prefix + "mask_fc.weight", prefix + "mask_fc.bias"):
            fusion["mask_proj." + key.rsplit(".", 1)[1]] = value
    handled = {prefix + k for k in ("fc.weight", "fc.bias", "mask_fc.weight", "mask_fc.bias", "image_token_weight",
                                    "region_token_weight")}
    ignored = [k for k in checkpoint if k not in handled and not k.startswith(encoders) and "lora_" not in k]
    perceiver = {k[len(prefix + "perceiver."):]: v for k, v in checkpoint.items() if k.startswith(prefix + "perceiver.")}
    fusion.update({"perceiver." + k: v for k, v in map_perceiver(perceiver, "checkpoint perceiver").items()})
    markers = [checkpoint.get(prefix + "image_token_weight"), checkpoint.get(prefix + "region_token_weight")]
    if all(m is not None for m in markers):
        fusion["marker_embed.weight"] = torch.cat(markers, dim=0)
    assign(model.fusion, fusion, "checkpoint embedding_layer", complete=True)
    loaded += [f"fusion.{k}" for k in fusion]
    lora = {}
    for key, value in checkpoint.items():
        if key.startswith("lang_model.") and "lora_" in key:
            lora[key[len("lang_model."):]] = value
    assign(model.lm, lora, "checkpoint lang_model LoRA", complete=False)
    loaded += [f"lm.{k}" for k in lora]
    return {"loaded": loaded, "ignored": ignored}
