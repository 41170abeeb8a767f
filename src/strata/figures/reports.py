"""Generated reports next to their references, region by region, matches coloured.

Each region row shows the reference and the generated text; a generated word is green
when it is part of the longest common subsequence with the reference region text (the
alignment ROUGE-L scores, on the same tokens as :func:`strata.evaluation.report_metrics.tokenize`),
red otherwise. Text is drawn in a monospaced font, so words are placed on a character
grid and wrapped at a fixed width.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from difflib import SequenceMatcher
from pathlib import Path

import pandas as pd

from strata.ct.regions import REGIONS
from strata.evaluation.report_metrics import tokenize
from strata.figures.style import plt, save

MATCH, MISS, MISSING = "#1a7f37", "#cf222e", "#8c959f"
WIDTH = 46  # characters per text column
FONT = 8.0
CHAR = 0.6 * FONT / 72  # inches per monospaced character
LINE = 1.45 * FONT / 72  # inches per line


def matched_words(generated: str, reference: str) -> list[tuple[str, bool]]:
    """The generated words, each with True when its token is in the LCS with the reference
    (a word of several tokens, e.g. ``seen.``, counts as matched when all its tokens are)."""
    words = generated.split()
    tokens, owner = [], []
    for i, word in enumerate(words):
        for t in tokenize(word):
            tokens.append(t)
            owner.append(i)
    matcher = SequenceMatcher(a=tokens, b=tokenize(reference), autojunk=False)
    hit = [False] * len(tokens)
    for block in matcher.get_matching_blocks():
        for k in range(block.a, block.a + block.size):
            hit[k] = True
    ok = [True] * len(words)
    for k, i in enumerate(owner):
        ok[i] = ok[i] and hit[k]
    return list(zip(words, ok))


def _wrap_words(words: list[tuple[str, bool]], width: int) -> list[list[tuple[str, bool, int]]]:
    """Lines of (word, matched, column)."""
    lines: list[list[tuple[str, bool, int]]] = [[]]
    col = 0
    for word, ok in words:
        if col and col + len(word) > width:
            lines.append([])
            col = 0
        lines[-1].append((word, ok, col))
        col += len(word) + 1
    return lines


def reports_figure(table: pd.DataFrame, studies: Sequence[str], title: str, path: str | Path) -> None:
    """``table``: a Reg2RG generate output; one block per study in ``studies``, one row per
    region (REGIONS order) with the reference and the coloured generated text (the trained
    model's rows; the controls' rows are left out)."""
    if "control" in table.columns:
        table = table[table["control"] == ""]
    blocks = []  # (study, [(region, ref lines, gen lines)])
    for study in studies:
        rows = table[(table["study_id"] == study) & (table["region"] != "")].set_index("region")
        regions = []
        for region in [r for r in REGIONS if r in rows.index]:
            ref, gen = str(rows.loc[region, "reference"]), str(rows.loc[region, "generated"])
            ref_lines = textwrap.wrap(ref, WIDTH) or ["(no reference)"]
            gen_lines = _wrap_words(matched_words(gen, ref), WIDTH) if gen else []
            regions.append((region, ref_lines, gen_lines))
        blocks.append((study, regions))
    n_lines = sum(4 + sum(max(len(r), len(g), 1) for _, r, g in regs) for _, regs in blocks) + 5
    col_region, col_ref, col_gen = 0.0, 22 * CHAR, (22 + WIDTH + 3) * CHAR
    width, height = col_gen + (WIDTH + 1) * CHAR, n_lines * LINE
    fig = plt.figure(figsize=(width + 0.2, height + 0.6))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width + 0.2)
    ax.set_ylim(height + 0.6, 0)
    ax.axis("off")
    mono = {"family": "monospace", "fontsize": FONT, "va": "top"}
    ax.text(0.1, 0.1, title, fontsize=FONT + 2, va="top", weight="bold")
    ax.text(0.1, 0.1 + 2.2 * LINE, "generated words: ", **mono)
    ax.text(0.1 + 17 * CHAR, 0.1 + 2.2 * LINE, "in the LCS with the reference region text", **mono, color=MATCH)
    ax.text(0.1 + 60 * CHAR, 0.1 + 2.2 * LINE, "not in it", **mono, color=MISS)
    y = 0.1 + 4 * LINE
    for study, regions in blocks:
        ax.text(0.1 + col_region, y, f"study {study}", **mono, weight="bold")
        y += LINE * 1.2
        ax.text(0.1 + col_region, y, "region", **mono, weight="bold")
        ax.text(0.1 + col_ref, y, "reference", **mono, weight="bold")
        ax.text(0.1 + col_gen, y, "generated", **mono, weight="bold")
        y += LINE * 1.3
        for region, ref_lines, gen_lines in regions:
            ax.text(0.1 + col_region, y, region, **mono, color="#24292f")
            for i, line in enumerate(ref_lines):
                ax.text(0.1 + col_ref, y + i * LINE, line, **mono, color="#24292f")
            if not gen_lines:
                ax.text(0.1 + col_gen, y, "(nothing generated)", **mono, color=MISSING, style="italic")
            for i, line in enumerate(gen_lines):
                for word, ok, col in line:
                    ax.text(0.1 + col_gen + col * CHAR, y + i * LINE, word, **mono, color=MATCH if ok else MISS)
            y += LINE * max(len(ref_lines), len(gen_lines), 1)
            ax.plot([0.1, width + 0.1], [y + 0.02, y + 0.02], color="#d0d7de", lw=0.5)
            y += 0.04
        y += LINE * 0.8
    save(fig, path)
