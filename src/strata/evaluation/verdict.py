"""Did each model learn? PASS / FAIL per run against fixed targets, with the numbers.

Read from every checkpoint's long evaluate table (trained rows and baselines). Targets:

Embedding runs (hierarchical ViT-3D, H-JEPA), at the best checkpoint (``best_step``), on the
level the validation groups prefer (highest ``probe_macro_f1_val``):

* ``beats random init``: probe macro F1 at least 0.10 above the random initialisation, and
  the paired bootstrap interval of the margin above 0;
* ``beats PCA``: at least 0.05 above PCA of the raw input;
* ``no probe score falls``: at every level, the last checkpoint's probe macro F1 is not
  below step 0's by more than 0.02;
* ``no collapse``: effective rank and per-dimension spread (level means) above random init;
* pose runs with frame- and sequence-level tasks (a label file): ``hierarchy``: the best
  level of the frame tasks is lower than that of the sequence tasks, and that ordering is
  absent or weaker at random initialisation.

Pose VAE at its best checkpoint: held-out ``recon_mse`` below PCA's at the same latent
budget; ``prior_mean`` decoding at least 10x worse (the latent is used); prior samples'
body length, ear gap and speed inside the data's 5th-95th percentiles; chunk-border error
at most 1.5x the chunk interior.

Reg2RG at its best checkpoint: every region written for at least 90 % of held-out studies;
finding accuracy at least 0.7, at least 0.2 above the swapped-token control and above the
all-normal template.

A target whose numbers are not reported FAILs and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from strata.evaluation.model_names import PCA_RAW, RANDOM_INIT, TRAINED


@dataclass(frozen=True)
class Check:
    """One target's outcome."""

    target: str
    passed: bool
    numbers: str


class RunMetrics:
    """One run's long metrics, indexed for lookups."""

    def __init__(self, long: pd.DataFrame) -> None:
        self.long = long
        self.steps = sorted(long["step"].unique())

    def value(self, metric: str, step: int, model: str = TRAINED, level: str | None = None) -> float:
        rows = self.long[(self.long["metric"] == metric) & (self.long["step"] == step)
                         & (self.long["model"] == model)]
        if level is not None:
            rows = rows[rows["level"] == level]
        return float(rows["value"].mean()) if len(rows) else float("nan")

    def levels(self, metric: str, step: int, model: str = TRAINED) -> pd.Series:
        rows = self.long[(self.long["metric"] == metric) & (self.long["step"] == step)
                         & (self.long["model"] == model) & (self.long["level"] != "all")]
        return rows.set_index("level")["value"].sort_index()


def _missing(target: str, *names: str) -> Check:
    return Check(target, False, f"not reported: {', '.join(names)}")


def _f(v: float) -> str:
    return f"{v:.3g}"


def embedding_checks(m: RunMetrics, best: int) -> list[Check]:
    out = []
    trained_steps = [s for s in m.steps if s != 0]
    if best == 0 and trained_steps:  # the initialisation scores best on validation: judge the best trained step
        val_means = {s: m.value("probe_macro_f1_val", s) for s in trained_steps}
        best = max(trained_steps, key=lambda s: (np.nan_to_num(val_means[s], nan=-1.0), -s))
        out.append(Check("training improves on the initialisation (validation)", False,
                         f"step 0 scores best on validation; below: the best trained step, {best}"))
    val = m.levels("probe_macro_f1_val", best)
    if val.empty or val.isna().all():
        return [*out, _missing("probe targets", "probe_macro_f1_val (no labels?)")]
    level = str(val.idxmax())
    f1 = m.value("probe_macro_f1", best, level=level)
    init = m.value("probe_macro_f1", best, RANDOM_INIT, level)
    low = m.value("probe_macro_f1_margin_ci_low", best, RANDOM_INIT, level)
    high = m.value("probe_macro_f1_margin_ci_high", best, RANDOM_INIT, level)
    if np.isnan(init):
        out.append(_missing("beats random init by 0.10", f"{RANDOM_INIT} probe_macro_f1"))
    else:
        out.append(Check("beats random init by 0.10 (interval > 0)", f1 - init >= 0.10 and low > 0,
                         f"L{level} step {best}: {_f(f1)} vs {_f(init)}, margin {_f(f1 - init)} "
                         f"[{_f(low)}, {_f(high)}]"))
    pca = m.value("probe_macro_f1", best, PCA_RAW, level)
    out.append(_missing("beats PCA by 0.05", "pca probe_macro_f1") if np.isnan(pca) else
               Check("beats PCA by 0.05", f1 - pca >= 0.05, f"L{level}: {_f(f1)} vs {_f(pca)}"))
    first, last = m.levels("probe_macro_f1", m.steps[0]), m.levels("probe_macro_f1", m.steps[-1])
    if m.steps[0] != 0 or first.empty:
        out.append(_missing("no probe score falls with training", "probe_macro_f1 at step 0"))
    else:
        drops = {lv: last[lv] - first[lv] for lv in last.index if lv in first.index}
        out.append(Check("no probe score falls with training", all(d >= -0.02 for d in drops.values()),
                         ", ".join(f"L{lv} {_f(first[lv])}->{_f(last[lv])}" for lv in drops)))
    ranks = [(m.value(k, best), m.value(k, best, RANDOM_INIT)) for k in ("embedding_effective_rank", "embedding_std")]
    if any(np.isnan(v) for pair in ranks for v in pair):
        out.append(_missing("no collapse", "embedding_effective_rank / embedding_std of trained and random_init"))
    else:
        out.append(Check("no collapse (rank and spread above random init)",
                         all(t > i for t, i in ranks),
                         f"rank {_f(ranks[0][0])} vs {_f(ranks[0][1])}, std {_f(ranks[1][0])} vs {_f(ranks[1][1])}"))
    hierarchy = hierarchy_check(m, best)
    if hierarchy is not None:
        out.append(hierarchy)
    return out


def _best_level(m: RunMetrics, metric: str, step: int, model: str = TRAINED) -> int | None:
    values = m.levels(metric, step, model).dropna()
    return int(values.idxmax()) if len(values) else None


def hierarchy_check(m: RunMetrics, best: int) -> Check | None:
    """Frame tasks best at a lower level than sequence tasks (None: no such tasks)."""
    frame, seq = _best_level(m, "task_f1", best), _best_level(m, "task_seq_f1", best)
    if frame is None or seq is None:
        return None
    frame0, seq0 = _best_level(m, "task_f1", 0, RANDOM_INIT), _best_level(m, "task_seq_f1", 0, RANDOM_INIT)
    if frame0 is None:  # step 0's own rows are the random initialisation
        frame0, seq0 = _best_level(m, "task_f1", 0), _best_level(m, "task_seq_f1", 0)
    weaker = frame0 is None or seq0 is None or (seq0 - frame0) < (seq - frame)
    return Check("hierarchy (frame tasks lower than sequence tasks, weaker at init)", frame < seq and weaker,
                 f"best level: frame tasks L{frame}, sequence tasks L{seq}; at init L{frame0}, L{seq0}")


def posevae_checks(m: RunMetrics, best: int) -> list[Check]:
    mse = m.value("recon_mse", best)
    out = []
    pca = m.value("recon_mse", best, "pca")
    out.append(_missing("beats PCA", "pca recon_mse") if np.isnan(pca) else
               Check("beats PCA at the same latent budget", mse < pca, f"recon_mse {_f(mse)} vs PCA {_f(pca)}"))
    prior = m.value("recon_mse", best, "prior_mean")
    out.append(_missing("latent used", "prior_mean recon_mse") if np.isnan(prior) else
               Check("prior-mean decoding 10x worse (latent used)", prior >= 10 * mse,
                     f"{_f(prior)} vs {_f(mse)} ({_f(prior / mse)}x)"))
    for name in ("body_length", "ear_gap", "speed"):
        inside = m.value(f"prior_{name}_in_range", best)
        out.append(_missing(f"prior {name}", f"prior_{name}_in_range") if np.isnan(inside) else
                   Check(f"prior samples' {name.replace('_', ' ')} in the data's 5-95th percentiles",
                         inside >= 0.5, f"fraction inside {_f(inside)}"))
    ratio = m.value("border_mse_ratio", best)
    out.append(_missing("chunk borders", "border_mse_ratio") if np.isnan(ratio) else
               Check("chunk-border error <= 1.5x interior", ratio <= 1.5, f"ratio {_f(ratio)}"))
    return out


def reg2rg_checks(m: RunMetrics, best: int) -> list[Check]:
    acc = m.value("finding_accuracy", best)
    swapped = m.value("finding_accuracy", best, "swapped_tokens")
    template = m.value("finding_accuracy", best, "normal_template")
    written = m.value("regions_complete", best)
    return [
        _missing("regions written", "regions_complete") if np.isnan(written) else
        Check("every region written for >= 90 % of held-out studies", written >= 0.9, f"{_f(written)}"),
        _missing("finding accuracy", "finding_accuracy") if np.isnan(acc) else
        Check("finding accuracy >= 0.7", acc >= 0.7, f"{_f(acc)}"),
        _missing("content used", "swapped_tokens finding_accuracy") if np.isnan(swapped) else
        Check("0.2 above swapped visual tokens", acc - swapped >= 0.2, f"{_f(acc)} vs {_f(swapped)}"),
        _missing("beats template", "normal_template finding_accuracy") if np.isnan(template) else
        Check("above the all-normal template", acc > template, f"{_f(acc)} vs {_f(template)}"),
    ]


#: family -> its targets (given the run's metrics and best step)
CHECKS: dict[str, Callable[[RunMetrics, int], list[Check]]] = {
    "hiera3d": embedding_checks,
    "hjepa": embedding_checks,
    "posevae": posevae_checks,
    "reg2rg": reg2rg_checks,
}


def verdict(long: pd.DataFrame, best_steps: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """One row per (family, run, target): passed and the numbers."""
    rows = []
    for (family, run), group in long.groupby(["family", "run"], sort=True):
        if family not in CHECKS:
            continue
        step = best_steps.get((family, run), int(group["step"].max()))
        for check in CHECKS[family](RunMetrics(group), step):
            rows.append((family, run, step, check.target, "PASS" if check.passed else "FAIL", check.numbers))
    return pd.DataFrame(rows, columns=["family", "run", "best_step", "target", "result", "numbers"])


def verdict_markdown(table: pd.DataFrame) -> str:
    failed = int((table["result"] == "FAIL").sum())
    head = (f"# Verdict: {'PASS' if failed == 0 else 'FAIL'} ({len(table) - failed} of {len(table)} "
            f"targets met)\n")
    parts = [head]
    for (family, run), rows in table.groupby(["family", "run"], sort=True):
        parts.append(f"## {family} / {run} (best checkpoint {int(rows['best_step'].iloc[0])})\n")
        parts += [f"- **{r.result}** {r.target}: {r.numbers}" for r in rows.itertuples(index=False)]
        parts.append("")
    return "\n".join(parts) + "\n"
