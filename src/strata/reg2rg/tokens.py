"""The special tokens of Reg2RG and their ids (docs/design.md §4.4).

After the base vocabulary ``V`` (the language model's; 32,000 for LLaMA-2) the tokenizer
holds, in this order::

    V + 0 .. V + 3                   <image> </image> <region> </region>   (trainable rows)
    V + 4 .. V + 4 + I - 1           <image0> .. <image{I-1}>               (global image)
    V + 4 + I + k*R + j              <region{k*R + j}>, j < R               (prompt region k)

with I = 32 image tokens and R = 33 tokens per region (32 texture + 1 geometry), so
region k owns ``<region{33k}> .. <region{33k+32}>`` and no id is shared between regions
(the original model class numbered them ``32k + j``, which overlaps; its dataset used
``33k + j``, the layout of its embedding table, used here everywhere). The visual tokens
have no embedding rows: their positions receive the visual features.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKERS = ("<image>", "</image>", "<region>", "</region>")


@dataclass(frozen=True)
class VisualTokenLayout:
    """Where the special tokens sit in the vocabulary.

    Args:
        base_vocab: ``V``, the language model's vocabulary (ids below are text).
        image_tokens: ``I`` tokens of the global image.
        region_tokens: ``R`` tokens per region (perceiver latents + 1 geometry token).
        max_regions: regions per study (10 in RadGenome-ChestCT).
    """

    base_vocab: int
    image_tokens: int = 32
    region_tokens: int = 33
    max_regions: int = 10

    @property
    def first_visual(self) -> int:
        """Id of ``<image0>``; every id from here on is a visual token."""
        return self.base_vocab + len(MARKERS)

    @property
    def n_visual(self) -> int:
        return self.image_tokens + self.max_regions * self.region_tokens

    @property
    def size(self) -> int:
        """Vocabulary size with every special token."""
        return self.first_visual + self.n_visual

    def marker_id(self, marker: str) -> int:
        return self.base_vocab + MARKERS.index(marker)

    def image_id(self, j: int) -> int:
        return self.first_visual + j

    def region_id(self, k: int, j: int) -> int:
        """Id of token ``j`` of prompt region ``k``."""
        if not (0 <= k < self.max_regions and 0 <= j < self.region_tokens):
            raise IndexError(f"region token ({k}, {j}) outside {self.max_regions} x {self.region_tokens}")
        return self.first_visual + self.image_tokens + k * self.region_tokens + j

    def image_text(self) -> str:
        return "".join(f"<image{j}>" for j in range(self.image_tokens))

    def region_text(self, k: int) -> str:
        """The ``R`` region tokens of prompt region ``k`` as text."""
        return "".join(f"<region{k * self.region_tokens + j}>" for j in range(self.region_tokens))

    def special_tokens(self) -> list[str]:
        """Every special token in id order (``V``, ``V + 1``, ...)."""
        return [*MARKERS, *(f"<image{j}>" for j in range(self.image_tokens)),
                *(f"<region{i}>" for i in range(self.max_regions * self.region_tokens))]
