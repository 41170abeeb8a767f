"""Reg2RG in the generate and evaluate stages: reports of held-out studies, report metrics.

Generate (one job per saved epoch): the checkpoint's trainable weights go into the model
its ``meta.json`` config describes (frozen LM rebuilt from the recorded seed), and
:func:`strata.reg2rg.generate.generate_reports` decodes the held-out studies
(``reg2rg.split``) with the configured decoding settings. Every study gets three sets of
rows, told apart by ``control``:

- ``""``: the checkpoint on the study's own visual tokens (model ``trained``);
- ``swapped_tokens``: the same checkpoint and prompt (the study's own region list) on
  another study's volume, region and mask tokens (:class:`~strata.reg2rg.dataset.SwappedSource`;
  donors from :func:`swap_donors`: the held-out list rotated by one, or a training study
  when only one is held out). What a report states beyond it does not come from the images;
- ``normal_template``: no model, a constant report: per region the most frequent sentence
  of the training studies' reports that states the region normal where one does
  (:func:`normal_template`; on the demo the all-normal report), written for every region
  the study lists.

Output rows (parquet):

==========  =======  ====================================================================
column      type     meaning
==========  =======  ====================================================================
study_id    string   held-out study
region      string   region name, or ``""`` for the whole report (regions in REGIONS order)
generated   string   generated text (``""`` when the model wrote nothing for the region)
reference   string   reference text (``""`` for a region only the model wrote)
raw         string   whole-report row: the decoded sequence(s), one per line; else ``""``
decoding    string   JSON of the decoding settings (``max_new_tokens``, ``num_beams``, ...)
control     string   ``""`` (trained), ``swapped_tokens`` or ``normal_template``
==========  =======  ====================================================================

One part file per ``reg2rg.generation.batch_size`` studies (resumable like the other
generators). Evaluate, per control as its own model (``trained``, ``swapped_tokens``,
``normal_template``; a table without ``control`` is all ``trained``): BLEU-1..4, METEOR,
ROUGE-L (:mod:`~strata.evaluation.report_metrics`) per-sample mean (``<metric>``) and
corpus level (``<metric>_corpus``) on whole reports, the same per region as
``region/<region>/<metric>[_corpus]``, ``regions_complete`` (fraction of studies whose
report has every region of its reference), and on the demo the finding-level accuracy
(:mod:`~strata.evaluation.findings`); all level ``all``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from strata.config import from_dict
from strata.ct.demo_plan import DemoFindings
from strata.ct.regions import REGIONS
from strata.evaluation.findings import finding_accuracy, states_normal
from strata.evaluation.parts import ChunkedParquet
from strata.evaluation.report_metrics import meteor_scorer, region_scores, scores
from strata.io.tensor_files import load_tensors
from strata.models.reg2rg.model import Reg2RG, build_reg2rg
from strata.reg2rg.config import GenerationConfig, Reg2RGConfig
from strata.reg2rg.dataset import Reg2RGDataset, SwappedSource, TokenCacheSource, study_sentences
from strata.reg2rg.generate import generate_reports
from strata.reg2rg.tokenizer import load_tokenizer
from strata.reg2rg.tokens import VisualTokenLayout
from strata.training.checkpoint import META, WEIGHTS

REGION_PREFIX = "region/"
COLUMNS = ("study_id", "region", "generated", "reference", "raw", "decoding")
OUTPUT_COLUMNS = (*COLUMNS, "control")  # what the generate stage writes
#: ``control`` value -> model name in the evaluate output
CONTROLS = {"": "trained", "swapped_tokens": "swapped_tokens", "normal_template": "normal_template"}


@dataclass(frozen=True)
class Reg2RGSources:
    """What a Reg2RG generate job reads besides its checkpoint.

    Args:
        tokenizer_dir: output of rule ``reg2rg_tokenizer``.
        token_dir: the frozen-encoder token cache.
        reports: ``results/cache/ct/reports.parquet`` (the references).
        study_ids: held-out studies to generate for.
        generation: decoding settings (``reg2rg.generation``).
    """

    tokenizer_dir: Path
    token_dir: Path
    reports: Path
    study_ids: tuple[str, ...]
    generation: GenerationConfig


@dataclass(frozen=True)
class LoadedReg2RG:
    """A Reg2RG checkpoint ready to generate: the model (eval mode), its tokenizer and
    visual-token layout, and the config and seed it was trained with."""

    model: Reg2RG
    tokenizer: Any
    layout: VisualTokenLayout
    cfg: Reg2RGConfig
    seed: int


def load_reg2rg(checkpoints: Path, step: int, tokenizer_dir: Path) -> LoadedReg2RG:
    """The model of epoch ``step`` with its tokenizer, layout, config and seed.

    The architecture and seed come from the checkpoint's ``meta.json`` (what training used);
    the checkpoint must hold exactly the model's trainable weights.
    """
    folder = Path(checkpoints) / str(step)
    meta_path, weights_path = folder / META, folder / WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no Reg2RG checkpoint for epoch {step}")
    meta = json.loads(meta_path.read_text())
    cfg = from_dict(Reg2RGConfig, meta["config"], where=f"{meta_path}: config")
    seed = int(meta["seed"])
    tokenizer, layout = load_tokenizer(tokenizer_dir, cfg.perceiver.num_latents)
    model = build_reg2rg(cfg, layout, seed, with_encoders=False)
    model.load_trainable_state_dict(load_tensors(str(weights_path)), str(weights_path))
    return LoadedReg2RG(model.eval(), tokenizer, layout, cfg, seed)


def report_rows(record: Mapping, references: Mapping[str, str], decoding: str, control: str = "") -> pd.DataFrame:
    """Rows of one study: the whole report, then every region the reference or the model has."""
    generated = record["regions"]
    listed = [r for r in REGIONS if r in references or r in generated]
    reference = " ".join(references[r] for r in REGIONS if r in references)
    sid = record["study_id"]
    rows = [(sid, "", record["report"], reference, "\n".join(record["texts"]), decoding, control)]
    rows += [(sid, r, generated.get(r, ""), references.get(r, ""), "", decoding, control) for r in listed]
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def swap_donors(held_out: Sequence[str], others: Sequence[str]) -> dict[str, str]:
    """Held-out study -> the study whose visual tokens the swapped-token control uses.

    A fixed derangement: the held-out list rotated by one; a single held-out study takes
    the first of ``others`` (the training studies)."""
    ids = list(held_out)
    if len(ids) != 1:
        return dict(zip(ids, ids[1:] + ids[:1]))
    if not others:
        raise ValueError(f"swapped-token control: no other study to take tokens from for {ids[0]}")
    return {ids[0]: min(others)}


def normal_template(sentences: Mapping[str, Mapping[str, str]], studies: Sequence[str]) -> dict[str, str]:
    """Region -> the constant sentence of the ``normal_template`` control.

    Per region the most frequent sentence over ``studies`` (ties: the first in study order),
    among the sentences that deny the region's finding (:func:`~strata.evaluation.findings.states_normal`:
    no nodule, normal heart, no effusion) where there are any. On the demo this is the
    all-normal report even where the findings are balanced (as many enlarged hearts as
    normal ones)."""
    counts: dict[str, Counter] = {}
    for study in sorted(studies):
        for region, text in sentences[study].items():
            counts.setdefault(region, Counter())[text] += 1
    out = {}
    for region in (r for r in REGIONS if r in counts):
        normal = Counter({t: n for t, n in counts[region].items() if states_normal(region, t)})
        out[region] = (normal or counts[region]).most_common(1)[0][0]
    return out


def template_record(study: str, references: Mapping[str, str], template: Mapping[str, str]) -> dict[str, Any]:
    """The template report of one study: the template sentence of every region it lists."""
    regions = {r: template[r] for r in REGIONS if r in references and r in template}
    return {"study_id": study, "report": " ".join(regions.values()), "regions": regions, "texts": []}


def reg2rg_reports(job: Any, loaded: LoadedReg2RG, parts: ChunkedParquet) -> int:
    """The ``GENERATORS`` entry: reports of ``job.reg2rg.study_ids`` and their controls,
    one part per ``batch_size`` studies."""
    src: Reg2RGSources = job.reg2rg
    sentences = study_sentences(pd.read_parquet(src.reports))
    gen = src.generation
    decoding = json.dumps({**dataclasses.asdict(gen), "top_p": 1.0}, sort_keys=True)
    ids = list(src.study_ids)
    missing = [s for s in ids if s not in sentences]
    if missing:
        raise ValueError(f"{src.reports}: no report sentences for held-out studies {missing[:3]}")
    training = [s for s in sorted(sentences) if s not in set(ids)]
    donors = swap_donors(ids, [s for s in training if (src.token_dir / f"{s}.safetensors").is_file()])
    template = normal_template(sentences, training or ids)
    size = gen.batch_size
    chunks = [ids[i:i + size] for i in range(0, len(ids), size)]
    cache = TokenCacheSource(src.token_dir)

    def decode(chunk: list[str], source: TokenCacheSource | SwappedSource) -> list[dict[str, Any]]:
        dataset = Reg2RGDataset(study_ids=chunk, sentences=sentences, source=source, tokenizer=loaded.tokenizer,
                                layout=loaded.layout, cfg=loaded.cfg.data, seed=loaded.seed, train=False)
        return generate_reports(loaded.model, dataset, gen, mode=gen.mode)

    def compute(chunk: list[str]) -> pd.DataFrame:
        frames = [report_rows(r, sentences[r["study_id"]], decoding) for r in decode(chunk, cache)]
        frames += [report_rows(r, sentences[r["study_id"]], decoding, "swapped_tokens")
                   for r in decode(chunk, SwappedSource(cache, donors))]
        frames += [report_rows(template_record(s, sentences[s], template), sentences[s], "", "normal_template")
                   for s in chunk]
        return pd.concat(frames, ignore_index=True)

    for i, chunk in enumerate(chunks):
        parts.run(i, lambda chunk=chunk: compute(chunk))
    return len(chunks)


def load_for_generation(job: Any) -> LoadedReg2RG:
    """The ``LOADERS`` entry of :mod:`strata.evaluation.generate`."""
    return load_reg2rg(job.checkpoints, job.step, job.reg2rg.tokenizer_dir)


def _named(frame: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    out = {}
    for row in frame.itertuples(index=False):
        out[f"{prefix}{row.metric}"] = float(row.per_sample_mean)
        out[f"{prefix}{row.metric}_corpus"] = float(row.corpus)
    return out


def report_metrics(table: pd.DataFrame, findings: Mapping[str, DemoFindings] | None,
                   with_meteor: bool = True) -> dict[str, float]:
    """Every Reg2RG metric of one model's rows of a generate output (names in the module docstring)."""
    whole = table[table["region"] == ""].sort_values("study_id", kind="stable")
    if whole.empty:
        raise ValueError("no whole-report rows in the generated table")
    studies = whole["study_id"].tolist()
    per_region = table[table["region"] != ""]
    hyp = {s: {} for s in studies}
    ref = {s: {} for s in studies}
    for row in per_region.itertuples(index=False):
        if row.generated:
            hyp[row.study_id][row.region] = row.generated
        if row.reference:
            ref[row.study_id][row.region] = row.reference
    with meteor_scorer() if with_meteor else contextlib.nullcontext() as scorer:
        out = _named(scores(whole["generated"].tolist(), whole["reference"].tolist(), "report", with_meteor, scorer))
        regions = region_scores([hyp[s] for s in studies], [ref[s] for s in studies], REGIONS, with_meteor, scorer)
    for region, frame in regions.groupby("scope", sort=False):
        out.update(_named(frame, f"{REGION_PREFIX}{region}/"))
    out["n_studies"] = float(len(studies))
    out["regions_complete"] = float(sum(set(ref[s]) <= set(hyp[s]) for s in studies) / len(studies))
    if findings is not None:
        missing = [s for s in studies if s not in findings]
        if missing:
            raise ValueError(f"no demo findings for studies {missing[:3]}")
        out.update(finding_accuracy([hyp[s] for s in studies], [findings[s] for s in studies]))
    return out


def demo_findings(raw: Mapping[str, Mapping[str, object]] | None) -> dict[str, DemoFindings] | None:
    """Rule params (study -> DemoFindings fields) -> DemoFindings."""
    if not raw:
        return None
    return {study: from_dict(DemoFindings, dict(v), where=f"demo findings of {study}") for study, v in raw.items()}


def reg2rg_metrics(job: Any) -> dict[str, dict[str, dict[str, float]]]:
    """The ``EVALUATORS`` entry: model -> level -> metric; ``trained`` and, when the generate
    output has them, the ``swapped_tokens`` and ``normal_template`` controls (level ``all``)."""
    table = pd.read_parquet(job.generated)
    control = table["control"] if "control" in table.columns else pd.Series("", index=table.index)
    unknown = sorted(set(control) - set(CONTROLS))
    if unknown:
        raise ValueError(f"{job.generated}: unknown control(s) {unknown}")
    return {CONTROLS[c]: {"all": report_metrics(table[control == c], job.demo_findings)}
            for c in CONTROLS if (control == c).any()}
