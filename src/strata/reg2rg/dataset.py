"""Prompt, answer, dataset and collator of Reg2RG (docs/design.md §4.4).

A study becomes one token sequence ``<s> PROMPT ANSWER </s>``:

- PROMPT (the original's text): ``The global information is provided as the context:
  <image><image0>..<image31></image>. `` then for every listed region i
  ``The region i is <region><region{33i}>..<region{33i+32}></region>. `` then the
  instruction :data:`INSTRUCTION`.
- ANSWER: ``The region i is AREA: SENTENCES `` region by region (trailing space dropped).

Listed regions are those the study has (mask present) *and* a sentence for; in training
with ``shuffle_regions`` their order is shuffled per sample with a generator seeded by
(seed, epoch, index), so the area names are only predictable from the visual tokens
(otherwise, and always in evaluation, they follow REGIONS order). Labels are -100 on the
prompt, on padding and on every special / visual token: the loss is on report tokens and
EOS only. Absent regions are zero tensors with ``region_present = False`` in the batch;
a study is never dropped.

Vision inputs come either from the token cache (frozen ViT-3D outputs, rule
``reg2rg_token_cache``) or from the cached CT tensors (the volumes, encoded on the fly as
the original does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from strata.ct.cache_format import read_study
from strata.ct.regions import REGION_INDEX, REGIONS
from strata.io.tensor_files import load_tensors
from strata.reg2rg.config import Reg2RGDataConfig
from strata.reg2rg.tokens import VisualTokenLayout

IGNORE = -100
INSTRUCTION = (
    "Given the provided global and regional information from this CT scan, please generate a comprehensive "
    "medical report for each region. First, identify the anatomical area corresponding to each region, then "
    "provide detailed information about these anatomical structures and any abnormalities that are essential. "
    "You can refer to the global information as the context and take it as a supplement when generating each "
    "region report."
)


class SequenceTooLongError(ValueError):
    """A study's prompt + answer does not fit ``max_seq``."""


def prompt_text(n_regions: int, layout: VisualTokenLayout) -> str:
    image = f"The global information is provided as the context: <image>{layout.image_text()}</image>. "
    regions = "".join(f"The region {i} is <region>{layout.region_text(i)}</region>. " for i in range(n_regions))
    return image + regions + INSTRUCTION


def answer_prefix(i: int, area: str) -> str:
    return f"The region {i} is {area}:"


def answer_text(regions: list[tuple[str, str]]) -> str:
    """``The region i is AREA: SENTENCES `` for each (area, sentences), in prompt order."""
    return "".join(f"{answer_prefix(i, area)} {sentences} " for i, (area, sentences) in enumerate(regions)).rstrip()


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int  # tokens before the answer (BOS included)
    truncated: bool


def encode_sample(tokenizer: Any, layout: VisualTokenLayout, study_id: str, regions: list[tuple[str, str]],
                  cfg: Reg2RGDataConfig) -> EncodedSample:
    """Token ids and labels of one study with regions ``[(area, sentences), ...]`` in prompt order."""
    prompt = tokenizer(prompt_text(len(regions), layout), add_special_tokens=False)["input_ids"]
    answer = tokenizer(answer_text(regions), add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    head = [bos, *prompt]
    truncated = False
    if len(head) + len(answer) + 1 > cfg.max_seq:
        if cfg.on_overflow == "error" or len(head) + 1 >= cfg.max_seq:
            raise SequenceTooLongError(
                f"study {study_id}: {len(head) + len(answer) + 1} tokens (prompt {len(head)}) exceed "
                f"max_seq {cfg.max_seq}" + ("" if cfg.on_overflow == "error" else "; the prompt alone does not fit"))
        answer, truncated = answer[: cfg.max_seq - len(head) - 1], True  # room kept for EOS
    ids = [*head, *answer, eos]
    labels = [IGNORE] * len(head) + [t if t < layout.base_vocab else IGNORE for t in answer] + [eos]
    return EncodedSample(ids, labels, len(head), truncated)


def study_sentences(reports: pd.DataFrame) -> dict[str, dict[str, str]]:
    """study id -> {region: sentences} from the cached report table (whole-report rows skipped)."""
    table = reports[reports["region"] != ""]
    out: dict[str, dict[str, str]] = {}
    for study, region, sentence in zip(table["study_id"], table["region"], table["sentence"]):
        if str(sentence).strip():
            out.setdefault(study, {})[region] = str(sentence).strip()
    return out


# --------------------------------------------------------------------------- vision sources


class TokenCacheSource:
    """Frozen-encoder outputs per study (``<dir>/<study>.safetensors``, see ``token_cache``)."""

    kind = "tokens"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def load(self, study_id: str) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        t = load_tensors(str(self.directory / f"{study_id}.safetensors"))
        vision = {"image": t["image_tokens"].float()}
        masks = {}
        for k, region in enumerate(REGIONS):
            vision[region] = t["region_tokens"][k].float()
            masks[region] = t["mask_features"][k].float()
        return vision, masks, t["region_present"].bool()


class VolumeSource:
    """Cached CT tensors per study (``results/cache/ct/studies/<study>.safetensors``)."""

    kind = "volumes"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def load(self, study_id: str) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        t = read_study(self.directory / f"{study_id}.safetensors")
        vision = {"image": t["image"].float()}
        masks = {}
        for k, region in enumerate(REGIONS):
            vision[region] = t["region_images"][k].float()
            masks[region] = t["region_masks"][k][None].float()
        return vision, masks, t["region_present"].bool()


class SwappedSource:
    """Another study's vision inputs under a study's own region list (the swapped-token control).

    ``load(study)`` returns the visual tokens and mask features of ``donors[study]`` with
    ``study``'s own ``region_present``, so the prompt lists the same regions as the trained
    row and only the visual content differs (a region the donor lacks is zero tensors).
    """

    def __init__(self, base: TokenCacheSource | VolumeSource, donors: dict[str, str]) -> None:
        self.base, self.donors, self.kind = base, dict(donors), base.kind

    def load(self, study_id: str) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        if study_id not in self.donors:
            raise KeyError(f"no donor study for {study_id} in the swapped-token control")
        vision, masks, _ = self.base.load(self.donors[study_id])
        _, _, present = self.base.load(study_id)
        return vision, masks, present


class Reg2RGDataset(torch.utils.data.Dataset):
    """One item per study: token ids, labels, region order and its vision inputs.

    Args:
        study_ids: studies in a fixed order.
        sentences: study id -> {region: sentences}.
        source: :class:`TokenCacheSource`, :class:`VolumeSource` or :class:`SwappedSource`.
        tokenizer: tokenizer with the special tokens.
        layout: their ids.
        cfg: prompt settings.
        seed: shuffling seed.
        train: shuffle the region order (training only).
        repeats: passes over ``study_ids`` per epoch (item ``i`` is study ``i % len(study_ids)``).
    """

    def __init__(self, *, study_ids: list[str], sentences: dict[str, dict[str, str]],
                 source: TokenCacheSource | VolumeSource | SwappedSource, tokenizer: Any, layout: VisualTokenLayout,
                 cfg: Reg2RGDataConfig, seed: int, train: bool, repeats: int = 1) -> None:
        missing = [s for s in study_ids if s not in sentences]
        if missing:
            raise ValueError(f"no region sentences for studies {missing[:5]}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.study_ids, self.sentences, self.source = list(study_ids), sentences, source
        self.tokenizer, self.layout, self.cfg, self.seed, self.train = tokenizer, layout, cfg, seed, train
        self.repeats = repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Region orders differ per epoch (called before each epoch's DataLoader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.study_ids) * self.repeats

    def region_order(self, index: int, present: Tensor) -> list[str]:
        study = self.study_ids[index % len(self.study_ids)]
        listed = [r for k, r in enumerate(REGIONS) if bool(present[k]) and r in self.sentences[study]]
        if self.train and self.cfg.shuffle_regions:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            listed = [listed[i] for i in rng.permutation(len(listed))]
        return listed

    def __getitem__(self, index: int) -> dict[str, Any]:
        study = self.study_ids[index % len(self.study_ids)]
        vision, masks, present = self.source.load(study)
        order = self.region_order(index, present)
        sample = encode_sample(self.tokenizer, self.layout, study, [(r, self.sentences[study][r]) for r in order],
                               self.cfg)
        region2area = torch.full((len(REGIONS),), -1, dtype=torch.long)
        region2area[: len(order)] = torch.tensor([REGION_INDEX[r] for r in order], dtype=torch.long)
        return {"lang_x": torch.tensor(sample.input_ids), "labels": torch.tensor(sample.labels),
                "vision_x": vision, "mask_x": masks, "region2area": region2area, "region_present": present}


class Reg2RGCollator:
    """Pads a list of items (right padding) into the batch the model's forward takes:
    ``lang_x, vision_x, mask_x, region2area, attention_mask, labels`` (+ ``region_present``)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(item["lang_x"]) for item in items)
        lang_x = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for b, item in enumerate(items):
            n = len(item["lang_x"])
            lang_x[b, :n], labels[b, :n], attention_mask[b, :n] = item["lang_x"], item["labels"], 1
        return {
            "lang_x": lang_x,
            "vision_x": {key: torch.stack([item["vision_x"][key] for item in items]) for key in items[0]["vision_x"]},
            "mask_x": {key: torch.stack([item["mask_x"][key] for item in items]) for key in items[0]["mask_x"]},
            "region2area": torch.stack([item["region2area"] for item in items]),
            "region_present": torch.stack([item["region_present"] for item in items]),
            "attention_mask": attention_mask,
            "labels": labels,
        }
