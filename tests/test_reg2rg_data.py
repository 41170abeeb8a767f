"""Reg2RG tokenizer, prompt, labels, region shuffling, missing regions and over-long sequences."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from strata.ct.regions import REGIONS
from strata.reg2rg.config import Reg2RGDataConfig
from strata.reg2rg.dataset import (
    IGNORE,
    INSTRUCTION,
    Reg2RGCollator,
    Reg2RGDataset,
    SequenceTooLongError,
    TokenCacheSource,
    encode_sample,
    study_sentences,
)
from strata.reg2rg.tokenizer import train_tokenizer

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture


def _dataset(fc, train=True, repeats=1, **data):
    cfg = fc["cfg"].data if not data else Reg2RGDataConfig(**{**fc["cfg"].data.__dict__, **data})
    return Reg2RGDataset(study_ids=fc["ids"], sentences=study_sentences(pd.read_parquet(fc["reports"])),
                         source=TokenCacheSource(fc["tokens"]), tokenizer=fc["tokenizer"], layout=fc["layout"],
                         cfg=cfg, seed=7, train=train, repeats=repeats)


def test_demo_tokenizer_is_trained_reproducibly_and_round_trips(fake_cache):
    corpus = ["A small 12 mm nodule is seen in the left lung.", "Heart size is normal."] * 3
    a, b = train_tokenizer(corpus, 120), train_tokenizer(corpus, 120)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    tok = fake_cache["tokenizer"]
    text = "The region 3 is lung: A large 24 mm nodule is seen in the right lung."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_decoded_example_has_the_prompt_and_labels_only_on_the_report(fake_cache):
    tok, layout = fake_cache["tokenizer"], fake_cache["layout"]
    ds = _dataset(fake_cache, train=False)
    batch = Reg2RGCollator(tok.pad_token_id)([ds[0], ds[1]])  # study 0 lacks thyroid: it is the shorter one
    ids, labels, mask = batch["lang_x"][0], batch["labels"][0], batch["attention_mask"][0]
    n = int(mask.sum())
    assert n < ids.shape[0] and (labels[n:] == IGNORE).all() and (ids[n:] == tok.pad_token_id).all()
    assert ids[0] == tok.bos_token_id
    text = tok.decode(ids[1:n])
    sentences = study_sentences(pd.read_parquet(fake_cache["reports"]))[fake_cache["ids"][0]]
    listed = [r for r in REGIONS if r in sentences]
    assert "thyroid" not in listed and len(listed) == 9
    expected_prompt = ("The global information is provided as the context: <image>" + layout.image_text()
                       + "</image>. " + "".join(f"The region {i} is <region>{layout.region_text(i)}</region>. "
                                                for i in range(9)) + INSTRUCTION)
    answer = " ".join(f"The region {i} is {r}: {sentences[r]}" for i, r in enumerate(listed))
    assert text.startswith(expected_prompt)
    assert text[len(expected_prompt):].strip() == answer + "</s>"
    labelled = labels[labels != IGNORE]
    assert tok.decode(labelled, skip_special_tokens=False).strip() == answer + "</s>"
    assert (labelled < layout.base_vocab).all()  # no special or visual token is ever a target
    first_label = int((labels != IGNORE).nonzero()[0, 0])
    assert (ids[:first_label] >= layout.base_vocab).sum() == 2 + 32 + 9 * (2 + 33)  # every prompt special token
    assert (ids[first_label:n] < layout.base_vocab).all()


def test_region_order_is_shuffled_per_sample_and_epoch_in_training_only(fake_cache):
    train, evaluation = _dataset(fake_cache, shuffle_regions=True), _dataset(fake_cache, train=False)
    index = 1  # all ten regions
    orders = []
    for epoch in range(4):
        train.set_epoch(epoch)
        orders.append(train[index]["region2area"].tolist())
    assert len({tuple(o) for o in orders}) > 1
    train.set_epoch(2)
    assert train[index]["region2area"].tolist() == orders[2]  # seeded: reproducible
    assert sorted(orders[0]) == list(range(10))
    assert evaluation[index]["region2area"].tolist() == list(range(10))
    # the answer follows the shuffled order: region i of the prompt is named in the answer
    tok = fake_cache["tokenizer"]
    item = train[index]
    text = tok.decode(item["labels"][item["labels"] != IGNORE])
    assert text.startswith(f"The region 0 is {REGIONS[item['region2area'][0]]}:")


def test_missing_regions_are_zero_padded_with_a_flag_and_the_study_is_kept(fake_cache):
    ds = _dataset(fake_cache)
    batch = Reg2RGCollator(0)([ds[i] for i in range(len(ds))])
    thyroid = REGIONS.index("thyroid")
    assert batch["lang_x"].shape[0] == len(fake_cache["ids"])
    assert not batch["region_present"][0, thyroid] and batch["region_present"][1:, thyroid].all()
    assert (batch["vision_x"]["thyroid"][0] == 0).all() and (batch["mask_x"]["thyroid"][0] == 0).all()
    assert batch["vision_x"]["thyroid"][1].abs().sum() > 0
    assert thyroid not in batch["region2area"][0].tolist() and batch["region2area"][0, 9] == -1
    assert set(batch) == {"lang_x", "vision_x", "mask_x", "region2area", "region_present", "attention_mask",
                          "labels"}
    assert set(batch["vision_x"]) == {"image", *REGIONS} and set(batch["mask_x"]) == set(REGIONS)


def test_over_long_sequences_fail_naming_the_study_or_are_truncated_keeping_eos(fake_cache):
    tok, layout = fake_cache["tokenizer"], fake_cache["layout"]
    regions = [("lung", "A small 12 mm nodule is seen in the left lung. " * 40)]
    cfg = Reg2RGDataConfig(max_seq=300, on_overflow="error", shuffle_regions=False)
    with pytest.raises(SequenceTooLongError, match="study s42"):
        encode_sample(tok, layout, "s42", regions, cfg)
    cut = encode_sample(tok, layout, "s42", regions, Reg2RGDataConfig(300, "truncate", False))
    assert cut.truncated and len(cut.input_ids) == 300 and len(cut.labels) == 300
    assert cut.input_ids[-1] == tok.eos_token_id and cut.labels[-1] == tok.eos_token_id
    with pytest.raises(SequenceTooLongError, match="study s42.*prompt alone"):
        encode_sample(tok, layout, "s42", regions, Reg2RGDataConfig(50, "truncate", False))
    exact = encode_sample(tok, layout, "s42", [("lung", "No nodule.")], Reg2RGDataConfig(10_000, "error", False))
    fit = encode_sample(tok, layout, "s42", [("lung", "No nodule.")],
                        Reg2RGDataConfig(len(exact.input_ids), "error", False))
    assert fit.input_ids == exact.input_ids and not fit.truncated
    assert torch.tensor(fit.labels)[-1] == tok.eos_token_id


def test_repeats_pass_over_the_studies_several_times_per_epoch(fake_cache):
    once, thrice = _dataset(fake_cache), _dataset(fake_cache, repeats=3)
    n = len(fake_cache["ids"])
    assert len(thrice) == 3 * len(once) == 3 * n
    assert torch.equal(thrice[n + 1]["lang_x"], once[1]["lang_x"])  # item i is study i % n
