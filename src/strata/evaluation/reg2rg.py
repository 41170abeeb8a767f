"""Reg2RG in the generate and evaluate stages: reports of held-out studies, report metrics.

Generate (one job per saved epoch): the checkpoint's trainable weights go into the model
its ``meta.json`` config describes (frozen LM rebuilt from the recorded seed), and
:func:`strata.reg2rg.generate.generate_reports` decodes the held-out studies
(``reg2rg.split``) with the configured decoding settings. Output rows (parquet):

==========  =======  ====================================================================
column      type     meaning
==========  =======  ====================================================================
study_id    string   held-out study
region      string   region name, or ``""`` for the whole report (regions in REGIONS order)
generated   string   generated text (``""`` when the model wrote nothing for the region)
reference   string   reference text (``""`` for a region only the model wrote)
raw         string   whole-report row: the decoded sequence(s), one per line; else ``""``
decoding    string   JSON of the decoding settings (``max_new_tokens``, ``num_beams``, ...)
==========  =======  ====================================================================

One part file per ``reg2rg.generation.batch_size`` studies (resumable like the other
generators). Evaluate: BLEU-1..4, METEOR, ROUGE-L (:mod:`~strata.evaluation.report_metrics`)
per-sample mean (``<metric>``) and corpus level (``<metric>_corpus``) on whole reports,
the same per region as ``region/<region>/<metric>[_corpus]``, and on the demo the
finding-level accuracy (:mod:`~strata.evaluation.findings`); all level ``all``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import load_file

from strata.config import from_dict
from strata.ct.demo_plan import DemoFindings
from strata.ct.regions import REGIONS
from strata.evaluation.findings import finding_accuracy
from strata.evaluation.parts import ChunkedParquet
from strata.evaluation.report_metrics import meteor_scorer, region_scores, scores
from strata.models.reg2rg.model import Reg2RG, build_reg2rg
from strata.reg2rg.config import GenerationConfig, Reg2RGConfig
from strata.reg2rg.dataset import Reg2RGDataset, TokenCacheSource, study_sentences
from strata.reg2rg.generate import generate_reports
from strata.reg2rg.tokenizer import load_tokenizer
from strata.reg2rg.tokens import VisualTokenLayout
from strata.training.checkpoint import META, WEIGHTS

REGION_PREFIX = "region/"
COLUMNS = ("study_id", "region", "generated", "reference", "raw", "decoding")


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
    model.load_trainable_state_dict(load_file(str(weights_path)), str(weights_path))
    return LoadedReg2RG(model.eval(), tokenizer, layout, cfg, seed)


def report_rows(record: Mapping, references: Mapping[str, str], decoding: str) -> pd.DataFrame:
    """Rows of one study: the whole report, then every region the reference or the model has."""
    generated = record["regions"]
    listed = [r for r in REGIONS if r in references or r in generated]
    reference = " ".join(references[r] for r in REGIONS if r in references)
    rows = [(record["study_id"], "", record["report"], reference, "\n".join(record["texts"]), decoding)]
    rows += [(record["study_id"], r, generated.get(r, ""), references.get(r, ""), "", decoding) for r in listed]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def reg2rg_reports(job: Any, loaded: LoadedReg2RG, parts: ChunkedParquet) -> int:
    """The ``GENERATORS`` entry: reports of ``job.reg2rg.study_ids``, one part per ``batch_size`` studies."""
    src: Reg2RGSources = job.reg2rg
    sentences = study_sentences(pd.read_parquet(src.reports))
    gen = src.generation
    decoding = json.dumps({**dataclasses.asdict(gen), "top_p": 1.0}, sort_keys=True)
    ids = list(src.study_ids)
    size = gen.batch_size
    chunks = [ids[i:i + size] for i in range(0, len(ids), size)]

    def compute(chunk: list[str]) -> pd.DataFrame:
        dataset = Reg2RGDataset(study_ids=chunk, sentences=sentences, source=TokenCacheSource(src.token_dir),
                                tokenizer=loaded.tokenizer, layout=loaded.layout, cfg=loaded.cfg.data,
                                seed=loaded.seed, train=False)
        records = generate_reports(loaded.model, dataset, gen, mode=gen.mode)
        return pd.concat([report_rows(r, sentences[r["study_id"]], decoding) for r in records], ignore_index=True)

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
    """Every Reg2RG metric of one generate output (names in the module docstring)."""
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


def reg2rg_metrics(job: Any) -> dict[str, dict[str, float]]:
    """The ``EVALUATORS`` entry."""
    return {"all": report_metrics(pd.read_parquet(job.generated), job.demo_findings)}
