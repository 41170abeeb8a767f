"""Reg2RG generation: explicit greedy settings, batched KV-cache decoding, attentions for rollout."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from strata.models.reg2rg import build_reg2rg
from strata.reg2rg.dataset import Reg2RGDataset, TokenCacheSource, study_sentences
from strata.reg2rg.generate import generate_reports, split_regions

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture


def _eval_dataset(fc, n=2):
    return Reg2RGDataset(study_ids=fc["ids"][:n], sentences=study_sentences(pd.read_parquet(fc["reports"])),
                         source=TokenCacheSource(fc["tokens"]), tokenizer=fc["tokenizer"], layout=fc["layout"],
                         cfg=fc["cfg"].data, seed=1, train=False)


def test_split_regions_reads_the_answer_format():
    text = "The region 0 is lung: A small 12 mm nodule is seen. The region 1 is heart: Heart size is normal."
    assert split_regions(text, ["lung", "heart"]) == {"lung": "A small 12 mm nodule is seen.",
                                                     "heart": "Heart size is normal."}


def test_generation_is_greedy_explicit_batched_and_ignores_the_shipped_config(fake_cache):
    model = build_reg2rg(fake_cache["cfg"], fake_cache["layout"], 1234, with_encoders=False)
    ds = _eval_dataset(fake_cache, n=1)  # study 0: 9 listed regions
    gen = dataclasses.replace(fake_cache["cfg"].generation, max_new_tokens=6, batch_size=1)
    one = generate_reports(model, ds, gen, mode="region")
    shipped = model.lm.generation_config
    shipped.do_sample, shipped.temperature, shipped.top_p, shipped.top_k = True, 0.6, 0.9, 5  # like Llama-2-chat
    batched = generate_reports(model, ds, dataclasses.replace(gen, batch_size=7), mode="region")
    assert model.lm.generation_config is shipped and shipped.do_sample  # restored afterwards
    assert [r["texts"] for r in one] == [r["texts"] for r in batched]  # greedy; left-padded batches agree
    assert len(one[0]["texts"]) == 9  # one sequence per listed region
    assert any(t for t in one[0]["texts"])
    assert one[0]["settings"] == {**dataclasses.asdict(gen), "mode": "region", "top_p": 1.0}
    assert not one[0]["settings"]["do_sample"] and one[0]["settings"]["num_beams"] == 1


def test_study_mode_returns_per_layer_attention_for_rollout(fake_cache):
    model = build_reg2rg(fake_cache["cfg"], fake_cache["layout"], 1234, with_encoders=False)
    ds = _eval_dataset(fake_cache)
    gen = dataclasses.replace(fake_cache["cfg"].generation, max_new_tokens=4, batch_size=2)
    records = generate_reports(model, ds, gen, mode="study", return_attentions=True)
    assert [r["study_id"] for r in records] == fake_cache["ids"][:2]
    layers = records[0]["attentions"][0]
    assert len(layers) == fake_cache["cfg"].llm.tiny.num_layers
    heads, n, m = layers[0].shape
    assert heads == fake_cache["cfg"].llm.tiny.num_heads and n == m > 300
    torch.testing.assert_close(layers[0].sum(-1), torch.ones(heads, n), atol=1e-4, rtol=1e-4)
    assert torch.triu(layers[1][0], diagonal=1).abs().max() == 0  # causal
