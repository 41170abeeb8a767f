"""Report generation from ``inputs_embeds`` (used by the generate stage; docs/design.md §4.4).

Decoding settings come only from ``reg2rg.generation`` and are recorded with every output.
``transformers`` fills every unset field of a passed ``GenerationConfig`` from the model's
own ``generation_config`` (for Llama-2-chat: ``do_sample=True, temperature=0.6,
top_p=0.9``), so every field is set here explicitly and the model's shipped config is
replaced by the same explicit one for the duration of the call.

Two modes, both batched with the KV cache (left padding):

- ``study``: one sequence per study, the whole answer; it is split into regions at each
  ``The region i is AREA:``;
- ``region``: one sequence per (study, listed region i): the prompt followed by
  ``The region i is`` and the model completes ``AREA: SENTENCES`` (cut where it starts the
  next region), so regions are decoded independently and in parallel.

Either way the report is assembled region by region in REGIONS order. With
``return_attentions`` a forward pass over prompt + generated tokens (eager attention)
returns the per-layer attention ``[heads, L, L]`` of every sequence, for rollout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Literal

import torch
from transformers import GenerationConfig as HFGenerationConfig

from strata.ct.regions import REGIONS
from strata.models.reg2rg.model import Reg2RG
from strata.reg2rg.config import GenerationConfig
from strata.reg2rg.dataset import Reg2RGDataset, answer_prefix, prompt_text

_REGION_START = re.compile(r"The region (\d+) is ([a-z ]+?):\s*")


def hf_generation_config(cfg: GenerationConfig, tokenizer: Any) -> HFGenerationConfig:
    """Every decoding field set explicitly (nothing inherited from a model's config)."""
    return HFGenerationConfig(
        max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=cfg.do_sample,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=1.0, typical_p=1.0, min_p=None,
        repetition_penalty=cfg.repetition_penalty, length_penalty=1.0, no_repeat_ngram_size=0,
        num_return_sequences=1, early_stopping=False, use_cache=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def split_regions(text: str, order: list[str]) -> dict[str, str]:
    """``The region i is AREA: ...`` segments -> {AREA: sentences} (the model's own area names)."""
    out: dict[str, str] = {}
    matches = list(_REGION_START.finditer(text))
    for m, nxt in zip(matches, [*matches[1:], None]):
        area = m.group(2).strip()
        body = text[m.end(): nxt.start() if nxt else len(text)].strip()
        if area in REGIONS and area not in out:
            out[area] = body
    return out


@contextlib.contextmanager
def _explicit_generation(model: Reg2RG, gen: HFGenerationConfig):
    lm = model.lm
    shipped = lm.generation_config
    lm.generation_config = gen
    was = model.training
    model.eval()
    try:
        yield
    finally:
        lm.generation_config = shipped
        model.train(was)


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, length - len(s):], mask[b, length - len(s):] = torch.tensor(s), 1
    return ids, mask


@torch.no_grad()
def generate_reports(model: Reg2RG, dataset: Reg2RGDataset, cfg: GenerationConfig, *,
                     mode: Literal["study", "region"] = "study", return_attentions: bool = False
                     ) -> list[dict[str, Any]]:
    """One record per study: ``study_id, report, regions {area: text}, texts, settings`` (+ attentions)."""
    if dataset.train:
        raise ValueError("generation uses an evaluation dataset (train=False: no region shuffling)")
    tok, layout = dataset.tokenizer, dataset.layout
    gen = hf_generation_config(cfg, tok)
    settings = {**dataclasses.asdict(cfg), "mode": mode, "top_p": 1.0}
    jobs = []  # (study index, region slot or None, token ids)
    items = [dataset[i] for i in range(len(dataset))]
    for i, item in enumerate(items):
        n = int((item["region2area"] >= 0).sum())
        prompt = [tok.bos_token_id, *tok(prompt_text(n, layout), add_special_tokens=False)["input_ids"]]
        if mode == "study":
            jobs.append((i, None, prompt))
        else:
            for k in range(n):
                prefix = tok(answer_prefix(k, "").rsplit(" ", 1)[0], add_special_tokens=False)["input_ids"]
                jobs.append((i, k, prompt + prefix))
    texts: dict[tuple[int, int | None], str] = {}
    attentions: dict[tuple[int, int | None], list[torch.Tensor]] = {}
    with _explicit_generation(model, gen):
        for start in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[start:start + cfg.batch_size]
            ids, mask = _left_pad([j[2] for j in chunk], tok.pad_token_id)
            sub = [items[j[0]] for j in chunk]
            vision = {key: torch.stack([s["vision_x"][key] for s in sub]) for key in sub[0]["vision_x"]}
            masks = {key: torch.stack([s["mask_x"][key] for s in sub]) for key in sub[0]["mask_x"]}
            region2area = torch.stack([s["region2area"] for s in sub])
            embeds = model.inputs_embeds(ids, vision, masks, region2area)
            out = model.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gen)
            for b, job in enumerate(chunk):
                texts[(job[0], job[1])] = tok.decode(out[b], skip_special_tokens=True).strip()
            if return_attentions:
                full = torch.cat([ids, out], dim=1)
                full_mask = torch.cat([mask, (out != tok.pad_token_id).long()], dim=1)
                embeds = model.inputs_embeds(full, vision, masks, region2area)
                model.lm.base_model.model.set_attn_implementation("eager")
                try:
                    att = model.lm(inputs_embeds=embeds, attention_mask=full_mask, output_attentions=True).attentions
                finally:
                    model.lm.base_model.model.set_attn_implementation("sdpa")
                for b, job in enumerate(chunk):
                    keep = full_mask[b].bool()
                    attentions[(job[0], job[1])] = [a[b][:, keep][:, :, keep] for a in att]
    records = []
    for i, item in enumerate(items):
        order = [REGIONS[int(a)] for a in item["region2area"] if a >= 0]
        if mode == "study":
            raw = {None: texts[(i, None)]}
            regions = split_regions(texts[(i, None)], order)
        else:
            raw = {k: texts[(i, k)] for k in range(len(order))}
            regions = {}
            for k in range(len(order)):
                body = re.split(r"\s*The region \d+ is", raw[k])[0]
                area, _, sentences = body.partition(":")
                if area.strip() in REGIONS and area.strip() not in regions:
                    regions[area.strip()] = sentences.strip()
        report = " ".join(regions[r] for r in REGIONS if r in regions)
        record = {"study_id": dataset.study_ids[i], "report": report, "regions": regions,
                  "texts": [raw[k] for k in raw], "settings": settings}
        if return_attentions:
            record["attentions"] = [attentions[(i, k)] for k in raw]
        records.append(record)
    return records
