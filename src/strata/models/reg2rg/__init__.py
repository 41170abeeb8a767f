"""Reg2RG (region-guided CT report generation), one module per component:
:mod:`.vit3d` (frozen ViT-3D), :mod:`.mask_encoder` (frozen encoders), :mod:`.perceiver`,
:mod:`.fusion` (visual tokens into ``inputs_embeds``), :mod:`.model` (the LoRA-wrapped LM
and construction), :mod:`.weights` (published RadFM / Reg2RG weights).

Names are imported lazily, so the token-cache job (encoders only) never imports
transformers / peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FrozenEncoders": "mask_encoder", "build_encoders": "mask_encoder", "PerceiverResampler": "perceiver",
    "Reg2RG": "model", "build_reg2rg": "model", "ViT3D": "vit3d", "VisualFusion": "fusion",
}
__all__ = ["FrozenEncoders", "PerceiverResampler", "Reg2RG", "ViT3D", "VisualFusion", "build_encoders",
           "build_reg2rg"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
