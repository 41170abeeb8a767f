"""Pose figures: rollout relevance per keypoint over time, reconstructions, prior samples.

Pose features are ordered (agent, keypoint, xy): feature ``2 * (a * K + k) + c``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strata.figures.style import minmax, plt, save
from strata.pose.keypoints import KEYPOINTS

K = len(KEYPOINTS)


def keypoint_labels(agents: int) -> list[str]:
    return [f"m{a} {name}" for a in range(agents) for name in KEYPOINTS]


def per_keypoint(values: np.ndarray) -> np.ndarray:
    """[T, F] per feature -> [T, F / 2] per (agent, keypoint): mean of x and y."""
    return values.reshape(values.shape[0], -1, 2).mean(axis=-1)


def pose_rollout_figure(relevance: np.ndarray, window: np.ndarray, title: str, path: str | Path,
                        matrix: np.ndarray | None = None) -> None:
    """Relevance per keypoint over time, raw and min-max, above the window's x coordinates.

    ``relevance``: [T, F] (per frame and feature) or [T] (over time only, pose VAE: then
    the raw rollout ``matrix`` [N, N] is drawn too); ``window``: [T, F] the input.
    """
    t, f = window.shape
    agents = f // (2 * K)
    labels = keypoint_labels(agents)
    over_time = relevance.ndim == 1
    maps = np.repeat(relevance[:, None], f // 2, axis=1) if over_time else per_keypoint(relevance)
    panels = 4 if over_time else 3
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.1 * panels))
    extent = (-0.5, t - 0.5, len(labels) - 0.5, -0.5)
    for ax, values, name in ((axes[0], maps, "raw"), (axes[1], minmax(maps), "min-max")):
        image = ax.imshow(values.T, aspect="auto", cmap="inferno", interpolation="nearest", extent=extent)
        ax.set_title(f"rollout relevance ({name})", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    coords = window[:, 0::2]  # (T, F/2): x of every keypoint
    image = axes[2].imshow(coords.T, aspect="auto", cmap="coolwarm", interpolation="nearest", extent=extent)
    axes[2].set_title("input: x coordinate per keypoint", fontsize=10)
    fig.colorbar(image, ax=axes[2], fraction=0.03, pad=0.01)
    for ax in axes[:3]:
        ticks = np.arange(0, len(labels), max(1, K // 4))
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
        ax.set_ylabel("mouse, keypoint", fontsize=8)
        ax.set_xlabel("frame")
    if over_time and matrix is not None:
        image = axes[3].imshow(matrix, cmap="inferno", interpolation="nearest", aspect="auto")
        axes[3].set_title("raw temporal rollout over chunks (row: output chunk, column: input chunk)", fontsize=10)
        axes[3].set_xlabel("input chunk")
        axes[3].set_ylabel("output chunk")
        fig.colorbar(image, ax=axes[3], fraction=0.03, pad=0.01)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)


def reconstruction_figure(inputs: np.ndarray, valid: np.ndarray, recons: np.ndarray, names: list[str],
                          title: str, path: str | Path, keypoints: tuple[int, ...] = (0, 6, 11)) -> None:
    """Input (dots: observed, crosses: filled) against reconstruction (line) for a few
    keypoints of agent 0, x and y over time; one column per window. ``inputs``, ``valid``,
    ``recons``: [W, T, F]."""
    windows = inputs.shape[0]
    fig, axes = plt.subplots(len(keypoints), windows, figsize=(4.2 * windows, 2.4 * len(keypoints)),
                             squeeze=False, sharex=True)
    frames = np.arange(inputs.shape[1])
    for col in range(windows):
        for row, k in enumerate(keypoints):
            ax = axes[row, col]
            for c, colour in ((0, "tab:blue"), (1, "tab:orange")):
                feature = 2 * k + c
                seen = valid[col, :, feature] > 0
                ax.plot(frames[seen], inputs[col, seen, feature], ".", color=colour, ms=3,
                        label=f"{'xy'[c]} input" if row == col == 0 else None)
                ax.plot(frames[~seen], inputs[col, ~seen, feature], "x", color=colour, ms=4)
                ax.plot(frames, recons[col, :, feature], "-", color=colour, lw=1.2,
                        label=f"{'xy'[c]} reconstruction" if row == col == 0 else None)
            ax.set_title(f"{names[col]}: m0 {KEYPOINTS[k]}", fontsize=9)
            if row == len(keypoints) - 1:
                ax.set_xlabel("frame")
    fig.suptitle(title, fontsize=11)
    fig.legend(loc="lower center", fontsize=8, ncol=4, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, path)


def samples_figure(prior: np.ndarray, interpolation: np.ndarray, title: str, path: str | Path) -> None:
    """Body-centre trajectories (x vs y) of every agent: prior samples [S, T, F] (one panel
    each) and the interpolation path [I, T, F] (one panel, colour = step)."""
    centre = KEYPOINTS.index("center")
    n = prior.shape[0] + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    agents = prior.shape[-1] // (2 * K)

    def draw(ax, pose: np.ndarray, colour: object | None, alpha: float = 1.0) -> None:
        for a in range(agents):
            f = 2 * (a * K + centre)
            c = colour if colour is not None else f"C{a}"
            ax.plot(pose[:, f], pose[:, f + 1], "-", color=c, lw=1, alpha=alpha,
                    label=f"mouse {a}" if colour is None else None)
            ax.plot(pose[0, f], pose[0, f + 1], "o", color=c, ms=3, alpha=alpha)

    for i in range(prior.shape[0]):
        draw(axes[0, i], prior[i], None)
        axes[0, i].set_title(f"prior sample {i}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    colours = plt.cm.viridis(np.linspace(0, 1, interpolation.shape[0]))
    for i, pose in enumerate(interpolation):
        draw(axes[0, -1], pose, colours[i], 0.8)
    axes[0, -1].set_title("interpolation (dark: start, yellow: end)", fontsize=9)
    for ax in axes[0]:
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    fig.suptitle(title + " (body centre of each mouse; dot = first frame)", fontsize=10)
    fig.tight_layout()
    save(fig, path)
