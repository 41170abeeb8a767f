"""The verdict: PASS / FAIL per learning target, from constructed metrics."""

from __future__ import annotations

import pandas as pd

from strata.evaluation.verdict import verdict, verdict_markdown

COLUMNS = ["family", "run", "step", "level", "model", "metric", "value"]


def _embedding_run(trained_f1: float, init_f1: float, margin_low: float) -> list[tuple]:
    rows = []
    for step in (0, 10):
        f1 = init_f1 if step == 0 else trained_f1
        for level in ("0", "1"):
            rows += [("hjepa", "pose", step, level, "trained", "probe_macro_f1", f1),
                     ("hjepa", "pose", step, level, "trained", "probe_macro_f1_val", f1),
                     ("hjepa", "pose", step, level, "trained", "embedding_effective_rank", 5.0 if step else 3.0),
                     ("hjepa", "pose", step, level, "trained", "embedding_std", 1.0 if step else 0.5)]
            if step:
                rows += [("hjepa", "pose", step, level, "random_init", "probe_macro_f1", init_f1),
                         ("hjepa", "pose", step, level, "random_init", "probe_macro_f1_margin_ci_low", margin_low),
                         ("hjepa", "pose", step, level, "random_init", "probe_macro_f1_margin_ci_high", 0.5),
                         ("hjepa", "pose", step, level, "random_init", "embedding_effective_rank", 3.0),
                         ("hjepa", "pose", step, level, "random_init", "embedding_std", 0.5),
                         ("hjepa", "pose", step, level, "pca", "probe_macro_f1", 0.5)]
    return rows


def test_an_embedding_run_that_learned_passes_every_target():
    table = verdict(pd.DataFrame(_embedding_run(0.8, 0.4, 0.2), columns=COLUMNS), {("hjepa", "pose"): 10})
    assert (table["result"] == "PASS").all() and len(table) == 4
    assert verdict_markdown(table).startswith("# Verdict: PASS (4 of 4 targets met)")


def test_a_run_at_its_random_init_fails_and_missing_numbers_fail_by_name():
    rows = _embedding_run(0.45, 0.4, -0.05)  # +0.05 and an interval that includes 0
    rows += [("posevae", "pose", 10, "all", "trained", "recon_mse", 0.1)]
    table = verdict(pd.DataFrame(rows, columns=COLUMNS), {("hjepa", "pose"): 10, ("posevae", "pose"): 10})
    result = table.set_index(["family", "target"])["result"]
    assert result[("hjepa", "beats random init by 0.10 (interval > 0)")] == "FAIL"
    assert result[("hjepa", "beats PCA by 0.05")] == "FAIL"
    vae = table[table["family"] == "posevae"]
    assert (vae["result"] == "FAIL").all() and vae["numbers"].str.startswith("not reported").all()
    assert "# Verdict: FAIL" in verdict_markdown(table)


def test_a_run_whose_initialisation_scores_best_fails_and_is_judged_at_its_best_trained_step():
    rows = _embedding_run(0.3, 0.4, -0.2)  # training made the probe worse
    table = verdict(pd.DataFrame(rows, columns=COLUMNS), {("hjepa", "pose"): 0})
    first = table.iloc[0]
    assert first["target"] == "training improves on the initialisation (validation)" and first["result"] == "FAIL"
    assert "step 10" in table.iloc[1]["numbers"]  # the other targets at the best trained step
