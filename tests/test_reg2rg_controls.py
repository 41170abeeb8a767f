"""Reg2RG evaluation controls: swapped visual tokens and the constant normal template."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from strata.ct.demo_plan import DemoFindings, region_sentences
from strata.ct.regions import REGIONS
from strata.evaluation.parts import ChunkedParquet
from strata.evaluation.reg2rg import (
    OUTPUT_COLUMNS,
    LoadedReg2RG,
    Reg2RGSources,
    normal_template,
    reg2rg_metrics,
    reg2rg_reports,
    swap_donors,
)
from strata.io.atomic import write_parquet
from strata.reg2rg.dataset import Reg2RGDataset, SwappedSource, TokenCacheSource, study_sentences

pytest_plugins = ["test_reg2rg_support"]  # the fake_cache fixture

NORMAL = DemoFindings(0, "left", False, "none")


def test_swap_donors_is_a_derangement_or_takes_a_training_study():
    assert swap_donors(["a", "b", "c"], ["x"]) == {"a": "b", "b": "c", "c": "a"}
    assert swap_donors(["a"], ["y", "x"]) == {"a": "x"}
    with pytest.raises(ValueError, match="no other study"):
        swap_donors(["a"], [])


def test_swapped_source_gives_the_donor_tokens_under_the_own_region_list(fake_cache):
    a, b = fake_cache["ids"][:2]  # a lacks the thyroid, b has it
    cache = TokenCacheSource(fake_cache["tokens"])
    vision, masks, present = SwappedSource(cache, {a: b}).load(a)
    own, donor = cache.load(a), cache.load(b)
    assert torch.equal(vision["image"], donor[0]["image"]) and not torch.equal(vision["image"], own[0]["image"])
    assert all(torch.equal(masks[r], donor[1][r]) for r in REGIONS)
    assert torch.equal(present, own[2]) and not torch.equal(present, donor[2])


def _token_echo(model, dataset: Reg2RGDataset, cfg, **kwargs):
    """A stand-in model whose report depends only on the study's visual tokens."""
    records = []
    for i, study in enumerate(dataset.study_ids):
        item = dataset[i]
        value = f"{float(item['vision_x']['image'].sum()):.4f}"
        regions = {r: f"tokens {value}" for r in ("lung", "heart")}
        records.append({"study_id": study, "report": " ".join(regions.values()), "regions": regions,
                        "texts": [value], "settings": {}})
    return records


def test_generate_writes_trained_swapped_and_template_rows(tmp_path, fake_cache, monkeypatch):
    import strata.evaluation.reg2rg as module

    monkeypatch.setattr(module, "generate_reports", _token_echo)
    ids = fake_cache["ids"]
    held_out = ids[:2]  # ids[2] is the training study
    loaded = LoadedReg2RG(None, fake_cache["tokenizer"], fake_cache["layout"], fake_cache["cfg"], 1234)
    gen = dataclasses.replace(fake_cache["cfg"].generation, batch_size=1)
    job = SimpleNamespace(reg2rg=Reg2RGSources(fake_cache["root"] / "tokenizer", fake_cache["tokens"],
                                               fake_cache["reports"], tuple(held_out), gen))
    parts = ChunkedParquet(tmp_path / "work", "fp")
    assert reg2rg_reports(job, loaded, parts) == 2
    table = pd.concat([pd.read_parquet(parts.part(i)) for i in range(2)], ignore_index=True)
    assert tuple(table.columns) == OUTPUT_COLUMNS
    assert set(table["control"]) == {"", "swapped_tokens", "normal_template"}
    whole = table[table["region"] == ""].set_index(["control", "study_id"])["generated"]
    a, b = held_out
    # the swapped row of a is what the model writes on b's tokens, and differs from a's own
    assert whole["swapped_tokens", a] == whole["", b] != whole["", a]
    assert whole["swapped_tokens", b] == whole["", a]
    # the template: the training study's sentence in every region the held-out study lists
    sentences = study_sentences(pd.read_parquet(fake_cache["reports"]))
    template = table[(table["control"] == "normal_template") & (table["region"] != "")]
    for study in held_out:
        rows = template[template["study_id"] == study].set_index("region")["generated"]
        assert rows.to_dict() == {r: sentences[ids[2]][r] for r in sentences[study]}


def test_normal_template_states_every_region_normal_on_demo_reports():
    """Even where most studies are abnormal (three enlarged hearts, three right effusions
    out of four) the template states every region normal."""
    plans = [NORMAL, DemoFindings(12, "left", True, "right"), DemoFindings(24, "right", True, "right"),
             DemoFindings(0, "left", True, "right")]
    sentences = {f"s{i}": region_sentences(f, REGIONS) for i, f in enumerate(plans)}
    template = normal_template(sentences, list(sentences))
    assert template == region_sentences(NORMAL, REGIONS)
    assert normal_template({"s": {"lung": "A small 9 mm nodule.", "heart": "Heart size is normal."}}, ["s"]) == {
        "heart": "Heart size is normal.", "lung": "A small 9 mm nodule."}  # no normal lung sentence: the mode


def test_template_finding_accuracy_on_a_constructed_case(tmp_path):
    """All-normal template against one normal and one abnormal study: the normal study is
    right on all four defined findings, the abnormal one (nodule, cardiomegaly, effusion)
    wrong on all five, so each finding's mean is 0.5 except the nodule side (0)."""
    truths = {"n": NORMAL, "x": DemoFindings(24, "right", True, "left")}
    template = region_sentences(NORMAL, REGIONS)
    rows = []
    for study, truth in truths.items():
        reference = region_sentences(truth, REGIONS)
        rows.append((study, "", " ".join(template.values()), " ".join(reference.values()), "", "{}",
                     "normal_template"))
        rows += [(study, r, template[r], reference[r], "", "{}", "normal_template") for r in REGIONS]
    path = tmp_path / "outputs.parquet"
    write_parquet(pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)), path)
    metrics = reg2rg_metrics(SimpleNamespace(generated=path, demo_findings=truths))
    assert set(metrics) == {"normal_template"}
    value = metrics["normal_template"]["all"]
    assert value["finding_accuracy/nodule_presence"] == value["finding_accuracy/cardiomegaly"] == 0.5
    assert value["finding_accuracy/nodule_size"] == value["finding_accuracy/effusion"] == 0.5
    assert value["finding_accuracy/nodule_side"] == 0.0
    assert value["finding_accuracy"] == pytest.approx(0.4)
    assert value["regions_complete"] == 1.0 and value["region/abdomen/rouge_l"] == pytest.approx(1.0)
