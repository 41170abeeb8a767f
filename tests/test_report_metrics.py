"""Report metrics: hand-computed cases, and BLEU / ROUGE-L against independent implementations."""

from __future__ import annotations

import math
import shutil

import pytest
from sacrebleu.metrics import BLEU

from strata.ct.demo_plan import DemoFindings, region_sentences
from strata.ct.regions import REGIONS
from strata.evaluation.findings import (
    StatedFindings,
    finding_accuracy,
    parse_findings,
    parse_heart,
    parse_lung,
    parse_pleura,
)
from strata.evaluation.report_metrics import bleu, region_scores, rouge_l, scores, tokenize

HYPS = ["The heart is enlarged. A small 12 mm nodule is seen in the left lung.",
        "No pleural effusion is seen.",
        "The trachea and main bronchi are patent.",
        "Heart size is normal."]
REFS = ["The heart is enlarged. A large 24 mm nodule is seen in the right lung.",
        "There is a left pleural effusion.",
        "The trachea and main bronchi are patent.",
        "The heart is enlarged."]


def lcs(a: list[str], b: list[str]) -> int:
    """Textbook dynamic-programming LCS length (the independent reference)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_tokenize_splits_punctuation_and_lowercases():
    assert tokenize("The heart is Enlarged, 12 mm.") == ["the", "heart", "is", "enlarged", ",", "12", "mm", "."]


def test_bleu_and_rouge_by_hand():
    h, r = ["the cat sat on the mat"], ["the cat is on the mat"]
    per, corpus = bleu([tokenize(h[0])], [tokenize(r[0])], 1)
    assert corpus == pytest.approx(5 / 6) and per[0] == pytest.approx(5 / 6)  # clipped unigram matches
    _, corpus2 = bleu([tokenize(h[0])], [tokenize(r[0])], 2)
    assert corpus2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5))  # 3 of 5 bigrams match
    per_l, corpus_l = rouge_l(h, r)
    assert per_l[0] == pytest.approx(5 / 6) and corpus_l == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    # brevity penalty: a 3-token hypothesis of a 6-token reference
    _, short = bleu([["the", "cat", "is"]], [tokenize(r[0])], 1)
    assert short == pytest.approx(math.exp(1 - 6 / 3))


def test_bleu_matches_sacrebleu_corpus_and_sentence_level():
    hyp_tok, ref_tok = [tokenize(h) for h in HYPS], [tokenize(r) for r in REFS]
    joined_h, joined_r = [" ".join(t) for t in hyp_tok], [" ".join(t) for t in ref_tok]
    for n in range(1, 5):
        per, corpus = bleu(hyp_tok, ref_tok, n)
        sacre = BLEU(max_ngram_order=n, tokenize="none", smooth_method="none")
        assert corpus == pytest.approx(sacre.corpus_score(joined_h, [joined_r]).score / 100, abs=1e-9)
        sentence = BLEU(max_ngram_order=n, tokenize="none", smooth_method="floor", smooth_value=0.1,
                        effective_order=False)
        expected = [sentence.sentence_score(h, [r]).score / 100 for h, r in zip(joined_h, joined_r)]
        assert per == pytest.approx(expected, abs=1e-9)


def test_rouge_l_matches_a_reference_lcs():
    per, corpus = rouge_l(HYPS, REFS)
    total_lcs = total_h = total_r = 0
    for h, r, score in zip(HYPS, REFS, per):
        th, tr = tokenize(h), tokenize(r)
        n = lcs(th, tr)
        p, rec = n / len(th), n / len(tr)
        assert score == pytest.approx(2 * p * rec / (p + rec) if n else 0.0)
        total_lcs, total_h, total_r = total_lcs + n, total_h + len(th), total_r + len(tr)
    p, rec = total_lcs / total_h, total_lcs / total_r
    assert corpus == pytest.approx(2 * p * rec / (p + rec))


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR 1.5 runs as a Java jar")
def test_meteor_identical_disjoint_and_partial():
    from strata.evaluation.report_metrics import meteor, meteor_scorer

    per, corpus = meteor(["the heart is enlarged .", "abc def", HYPS[0]],
                         ["The heart is enlarged.", "xyz uvw", REFS[0]])
    assert per[0] == pytest.approx(1.0) and per[1] == 0.0 and 0.3 < per[2] < 1.0
    assert 0 < corpus < 1
    # one running jar for several calls (as the evaluate stage does) gives the same scores
    with meteor_scorer() as scorer:
        shared = meteor(["the heart is enlarged .", "abc def", HYPS[0]],
                        ["The heart is enlarged.", "xyz uvw", REFS[0]], scorer)
        assert meteor(["abc def"], ["xyz uvw"], scorer)[0] == [0.0]
    assert shared == (per, corpus)


def test_scores_and_regions_table():
    whole = scores(HYPS, REFS, with_meteor=False)
    assert list(whole["metric"]) == ["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"]
    assert whole["corpus"].between(0, 1).all() and (whole["n"] == 4).all()
    hyp = [{"heart": "The heart is enlarged.", "lung": "No nodule."}, {"heart": "Heart size is normal."}]
    ref = [{"heart": "The heart is enlarged.", "lung": "A small nodule."}, {"heart": "The heart is enlarged."}]
    regions = region_scores(hyp, ref, ["heart", "lung", "pleura"], with_meteor=False)
    assert set(regions["scope"]) == {"heart", "lung"}  # no reference states the pleura
    heart = regions[(regions["scope"] == "heart") & (regions["metric"] == "bleu1")]
    assert heart["n"].item() == 2
    with pytest.raises(ValueError, match="hypotheses"):
        scores(["a"], ["a", "b"])


# --------------------------------------------------------------------------- finding-level accuracy


@pytest.mark.parametrize(("text", "expected"), [
    ("A small 12 mm nodule is seen in the left lung.", (True, "small", "left")),
    ("A large 24 mm nodule is seen in the right lung.", (True, "large", "right")),
    ("A small 20 mm nodule is seen in the right lung.", (True, "large", "right")),  # the millimetres decide
    ("A large nodule is seen in the left lung.", (True, "large", "left")),  # no number: the size word
    ("A 9 mm nodule is seen.", (True, "small", None)),  # side not stated
    ("No pulmonary nodule is seen. The lung parenchyma is clear.", (False, "none", None)),
    ("No nodule.", (False, "none", None)),
    ("The lung parenchyma is clear.", (None, None, None)),  # says nothing about a nodule
    ("", (None, None, None)),
])
def test_parse_lung_sentences(text, expected):
    assert parse_lung(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The heart is enlarged.", True), ("Cardiomegaly.", True), ("Heart size is normal.", False),
    ("The heart is", None), ("", None)])
def test_parse_heart_sentences(text, expected):
    assert parse_heart(text) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("There is a left pleural effusion.", "left"), ("There is a right pleural effusion.", "right"),
    ("No pleural effusion is seen.", "none"), ("There is a pleural effusion.", None), ("", None)])
def test_parse_pleura_sentences(text, expected):
    assert parse_pleura(text) == expected


def test_the_demo_sentences_parse_back_to_their_findings():
    for findings in (DemoFindings(0, "left", False, "none"), DemoFindings(12, "right", True, "left"),
                     DemoFindings(24, "left", False, "right")):
        stated = parse_findings(region_sentences(findings, REGIONS))
        assert stated == StatedFindings(findings.nodule_mm > 0, {0: "none", 12: "small", 24: "large"}[findings.nodule_mm],
                                        findings.nodule_side if findings.nodule_mm else None,
                                        findings.cardiomegaly, findings.effusion)


def test_finding_accuracy_by_hand():
    truths = [DemoFindings(12, "left", True, "none"),    # study a: small nodule, left
              DemoFindings(0, "right", False, "left"),   # study b: no nodule
              DemoFindings(24, "right", False, "none")]  # study c: large nodule, right
    generated = [
        # a: presence right, size wrong (large), side right, heart right, effusion right
        {"lung": "A large 20 mm nodule is seen in the left lung.", "heart": "The heart is enlarged.",
         "pleura": "No pleural effusion is seen."},
        # b: presence wrong, size wrong, (no side: not scored), heart right, effusion wrong side
        {"lung": "A small 10 mm nodule is seen in the left lung.", "heart": "Heart size is normal.",
         "pleura": "There is a right pleural effusion."},
        # c: presence right, size right, side wrong, heart unreadable (missing), effusion right
        {"lung": "A large 28 mm nodule is seen in the left lung.", "pleura": "No pleural effusion is seen."},
    ]
    acc = finding_accuracy(generated, truths)
    assert acc["finding_accuracy/nodule_presence"] == pytest.approx(2 / 3)
    assert acc["finding_accuracy/nodule_size"] == pytest.approx(1 / 3)
    assert acc["finding_accuracy/nodule_side"] == pytest.approx(1 / 2)  # over the 2 studies with a nodule
    assert acc["finding_accuracy/cardiomegaly"] == pytest.approx(2 / 3)
    assert acc["finding_accuracy/effusion"] == pytest.approx(2 / 3)
    assert acc["finding_accuracy"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2 + 2 / 3 + 2 / 3) / 5)
    perfect = finding_accuracy([region_sentences(t, REGIONS) for t in truths], truths)
    assert all(v == 1.0 for v in perfect.values())
    with pytest.raises(ValueError, match="3 studies"):
        finding_accuracy(generated[:2], truths)
