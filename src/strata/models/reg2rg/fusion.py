"""Fusion: visual features into the LLM's ``inputs_embeds`` (docs/design.md §4.4).

1. The perceiver resampler turns each volume's ViT tokens into ``I`` latents (32), and
   ``proj`` maps them to the LLM width: the global image gives ``I`` tokens, each listed
   region ``I`` texture tokens.
2. ``mask_proj`` maps the region's mean-pooled mask feature to one geometry token, so a
   region has ``R = I + 1`` tokens.
3. Text ids embed through the LLM's frozen table; the four markers (``<image>``,
   ``</image>``, ``<region>``, ``</region>``) through ``marker_embed`` (the new, trainable
   rows); every visual token position is overwritten with its feature by an index write
   (``index_put``), never a one-hot product over a concatenated table: gradients reach the
   features and the marker rows, and the frozen text rows get none.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from strata.models.reg2rg.perceiver import PerceiverResampler
from strata.reg2rg.config import PerceiverConfig
from strata.reg2rg.tokens import MARKERS, VisualTokenLayout


class VisualFusion(nn.Module):
    """Perceiver + projections + marker rows; builds ``inputs_embeds``.

    Args:
        vis_dim: ViT-3D token width.
        mask_dim: mask-encoder width.
        llm_dim: language-model width.
        perceiver: resampler settings (``num_latents`` must equal the layout's image tokens).
        layout: special-token ids.
    """

    def __init__(self, *, vis_dim: int, mask_dim: int, llm_dim: int, perceiver: PerceiverConfig,
                 layout: VisualTokenLayout) -> None:
        super().__init__()
        if layout.image_tokens != perceiver.num_latents or layout.region_tokens != perceiver.num_latents + 1:
            raise ValueError(f"token layout ({layout.image_tokens} image, {layout.region_tokens} region tokens) "
                             f"does not match {perceiver.num_latents} perceiver latents (+1 geometry token)")
        self.layout = layout
        self.perceiver = PerceiverResampler(dim=vis_dim, cfg=perceiver)
        self.proj = nn.Linear(vis_dim, llm_dim)
        self.mask_proj = nn.Linear(mask_dim, llm_dim)
        self.marker_embed = nn.Embedding(len(MARKERS), llm_dim)

    def visual_table(self, image_tokens: Tensor, region_tokens: Tensor, mask_features: Tensor,
                     region2area: Tensor) -> Tensor:
        """Features of every visual token id, ``[B, I + max_regions * R, llm_dim]``.

        ``image_tokens`` [B, N, vis_dim]; ``region_tokens`` [B, 10, n, vis_dim] and
        ``mask_features`` [B, 10, mask_dim] in REGIONS order; ``region2area`` [B, 10]: the
        REGIONS index of prompt region k (-1 = unused slot, its rows stay zero).
        """
        b_size, lay = image_tokens.shape[0], self.layout
        image = self.proj(self.perceiver(image_tokens))  # (B, I, D)
        b, k = (region2area >= 0).nonzero(as_tuple=True)  # the listed (sample, prompt slot) pairs
        area = region2area[b, k]
        texture = self.proj(self.perceiver(region_tokens[b, area]))  # (M, I, D)
        geometry = self.mask_proj(mask_features[b, area])  # (M, D)
        regions = torch.cat([texture, geometry[:, None]], dim=1)  # (M, R, D)
        table = image.new_zeros(b_size, lay.max_regions, lay.region_tokens, image.shape[-1])
        table = table.index_put((b, k), regions.to(table.dtype))
        return torch.cat([image, table.flatten(1, 2)], dim=1)

    def embed(self, ids: Tensor, text_embedding: nn.Module, table: Tensor) -> Tensor:
        """``inputs_embeds`` [B, L, D] for token ids [B, L] given the visual table."""
        lay = self.layout
        text = text_embedding(ids.clamp(max=lay.base_vocab - 1))  # frozen rows; special positions replaced below
        is_marker = (ids >= lay.base_vocab) & (ids < lay.first_visual)
        markers = self.marker_embed((ids - lay.base_vocab).clamp(0, len(MARKERS) - 1)).to(text.dtype)
        embeds = torch.where(is_marker[..., None], markers, text)
        b, t = (ids >= lay.first_visual).nonzero(as_tuple=True)
        slot = ids[b, t] - lay.first_visual
        return embeds.index_put((b, t), table[b, slot].to(embeds.dtype))
