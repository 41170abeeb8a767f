"""Report-generation metrics: BLEU-1..4, METEOR, ROUGE-L; per-sample mean and corpus level.

Everything runs offline (no download at run time):

* **Tokenisation** (all metrics): lower-case, then words and punctuation marks as separate
  tokens (regex ``\\w+|[^\\w\\s]``): "The heart is enlarged." -> ``the heart is enlarged .``
* **BLEU-n** (nltk ``translate.bleu_score``, pure code, uniform weights over 1..n-grams,
  one reference, brevity penalty): corpus level = ``corpus_bleu`` (n-gram counts summed over
  the corpus, no smoothing, as the papers report it); per sample = ``sentence_bleu`` with
  ``SmoothingFunction(epsilon=0.1).method1`` (a zero n-gram count becomes 0.1, else a short
  sentence without any 4-gram match scores exactly 0), averaged over samples. The test
  checks both against sacrebleu (``tokenize='none'``; ``smooth_method='none'`` / ``'floor'``
  with value 0.1).
* **METEOR** (METEOR 1.5, the Java jar shipped inside ``pycocoevalcap``, ``-l en -norm``,
  exact + stem + synonym + paraphrase modules with the jar's bundled data; needs ``java``
  on PATH): per-sample scores averaged, and the jar's aggregate (corpus) score computed
  from the pooled match statistics. nltk's ``meteor_score`` is not used: it needs the
  WordNet corpus, which is a download.
* **ROUGE-L** (``rouge-score``'s LCS, F1 = beta 1, no stemming, the tokeniser above):
  per sample F1 averaged; corpus level = F1 of the LCS lengths summed over samples
  against the summed hypothesis and reference lengths (micro average).

Whole-report scores take each sample's full text; :func:`region_scores` scores every
region separately over the samples whose reference has that region (a region missing
from the hypothesis counts as an empty text).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from rouge_score.rouge_scorer import RougeScorer

TOKEN = re.compile(r"\w+|[^\w\s]")
SENTENCE_SMOOTHING = SmoothingFunction(epsilon=0.1).method1
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l")
COLUMNS = ("scope", "metric", "per_sample_mean", "corpus", "n")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return TOKEN.findall(text.lower())


class _Tokenizer:
    """The tokeniser in the interface rouge-score expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def bleu(hypotheses: Sequence[list[str]], references: Sequence[list[str]], n: int) -> tuple[list[float], float]:
    """Per-sample (smoothed) and corpus BLEU-``n`` of token lists."""
    weights = tuple([1.0 / n] * n)
    per_sample = [float(sentence_bleu([r], h, weights=weights, smoothing_function=SENTENCE_SMOOTHING))
                  if h else 0.0 for h, r in zip(hypotheses, references)]
    with warnings.catch_warnings():  # nltk warns when an n-gram order has no match; the score is 0 then
        warnings.simplefilter("ignore", UserWarning)
        corpus = float(corpus_bleu([[r] for r in references], list(hypotheses), weights=weights))
    return per_sample, corpus


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[float], float]:
    """Per-sample ROUGE-L F1 and the micro-averaged (corpus) F1."""
    scorer = RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    per_sample, lcs, hyp_len, ref_len = [], 0.0, 0, 0
    for h, r in zip(hypotheses, references):
        score = scorer.score(r, h)["rougeL"]  # score(target, prediction)
        n_h, n_r = len(tokenize(h)), len(tokenize(r))
        per_sample.append(float(score.fmeasure))
        lcs += score.recall * n_r  # recall = LCS / |reference|
        hyp_len, ref_len = hyp_len + n_h, ref_len + n_r
    p, r = (lcs / hyp_len if hyp_len else 0.0), (lcs / ref_len if ref_len else 0.0)
    return per_sample, (2 * p * r / (p + r) if p + r else 0.0)


@contextlib.contextmanager
def meteor_scorer() -> Iterator[Any]:
    """One METEOR Java process for several :func:`meteor` calls (starting the jar and
    loading its paraphrase table takes seconds; the process is stopped on exit)."""
    if shutil.which("java") is None:
        raise RuntimeError("METEOR needs `java` on PATH (it runs the METEOR 1.5 jar shipped with pycocoevalcap)")
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        del scorer  # its __del__ stops the Java process


def meteor(hypotheses: Sequence[str], references: Sequence[str], scorer: Any = None) -> tuple[list[float], float]:
    """Per-sample METEOR 1.5 scores and the aggregate score (Java jar of pycocoevalcap);
    ``scorer`` from :func:`meteor_scorer` reuses a running jar."""
    if scorer is None:
        with meteor_scorer() as own:
            return meteor(hypotheses, references, own)
    # The jar reads one line per segment: tokens joined by spaces, newlines removed.
    gts = {i: [" ".join(tokenize(r))] for i, r in enumerate(references)}
    res = {i: [" ".join(tokenize(h)) or "."] for i, h in enumerate(hypotheses)}
    corpus, per_sample = scorer.compute_score(gts, res)
    return [float(s) for s in per_sample], float(corpus)


def scores(hypotheses: Sequence[str], references: Sequence[str], scope: str = "report",
           with_meteor: bool = True, scorer: Any = None) -> pd.DataFrame:
    """Every metric of aligned ``hypotheses`` and ``references`` (rows of :data:`COLUMNS`);
    ``scorer``: a running METEOR jar (:func:`meteor_scorer`), else one is started."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no samples to score")
    hyp_tokens, ref_tokens = [tokenize(h) for h in hypotheses], [tokenize(r) for r in references]
    results = {f"bleu{n}": bleu(hyp_tokens, ref_tokens, n) for n in range(1, 5)}
    if with_meteor:
        results["meteor"] = meteor(hypotheses, references, scorer)
    results["rouge_l"] = rouge_l(hypotheses, references)
    return pd.DataFrame([(scope, name, float(np.mean(per)), corpus, len(references))
                         for name, (per, corpus) in results.items()], columns=list(COLUMNS))


def region_scores(hypotheses: Sequence[Mapping[str, str]], references: Sequence[Mapping[str, str]],
                  regions: Sequence[str], with_meteor: bool = True, scorer: Any = None) -> pd.DataFrame:
    """Per-region metrics: for each region, the samples whose reference states it."""
    if with_meteor and scorer is None:
        with meteor_scorer() as own:
            return region_scores(hypotheses, references, regions, with_meteor, own)
    frames = []
    for region in regions:
        pairs = [(h.get(region, ""), r[region]) for h, r in zip(hypotheses, references) if r.get(region)]
        if pairs:
            frames.append(scores([h for h, _ in pairs], [r for _, r in pairs], region, with_meteor, scorer))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
