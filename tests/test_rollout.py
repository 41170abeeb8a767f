"""Attention rollout against direct numpy computations of docs/design.md §5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata.rollout import (
    layer_matrix,
    minmax_rows,
    pooling_assignment,
    rollout,
    row_normalise,
    temporal_rollout,
)


def random_attention(rng: np.random.Generator, *shape: int) -> np.ndarray:
    a = rng.random(shape) ** 3
    return a / a.sum(-1, keepdims=True)  # row-stochastic, as softmax output is


def numpy_layer(a: np.ndarray) -> np.ndarray:
    m = a.mean(axis=0) + np.eye(a.shape[-1])
    return m / m.sum(axis=-1, keepdims=True)


def test_identity_attention_gives_identity():
    eye = torch.eye(7).expand(3, 4, 7, 7)  # 3 frames, 4 heads
    torch.testing.assert_close(rollout([eye] * 5), torch.eye(7).expand(3, 7, 7))


def test_one_layer_is_row_normalised_a_plus_i():
    rng = np.random.default_rng(0)
    a = random_attention(rng, 4, 6, 6)
    expected = (a.mean(0) + np.eye(6)) / (a.mean(0) + np.eye(6)).sum(-1, keepdims=True)
    np.testing.assert_allclose(rollout([torch.from_numpy(a)]).numpy(), expected, rtol=1e-12)


def test_spatial_rollout_equals_the_documented_product_and_not_the_reverse():
    rng = np.random.default_rng(1)
    frames, layers, heads, n = 5, 6, 3, 9
    attn = random_attention(rng, frames, layers, heads, n, n)
    ours = rollout([torch.from_numpy(attn[:, l]) for l in range(layers)]).numpy()
    for f in range(frames):
        mats = [numpy_layer(attn[f, l]) for l in range(layers)]
        product = np.linalg.multi_dot(mats[::-1])  # A_{L-1} @ ... @ A_0
        accumulated = np.eye(n)
        for m in mats:  # vit-explain / attention_flow: result = a @ result
            accumulated = m @ accumulated
        np.testing.assert_allclose(ours[f], product, rtol=1e-10)
        np.testing.assert_allclose(ours[f], accumulated, rtol=1e-10)
        assert not np.allclose(product, np.linalg.multi_dot(mats))  # the reverse order differs
        np.testing.assert_allclose(ours[f].sum(-1), 1.0, rtol=1e-12)  # no final normalisation needed


def test_temporal_rollout_matches_numpy_per_instance():
    rng = np.random.default_rng(2)
    layers, t = 4, 11
    attn = random_attention(rng, 2, layers, t, t)  # 2 instances, no heads
    ours = temporal_rollout([torch.from_numpy(attn[:, l]) for l in range(layers)], has_heads=False).numpy()
    for i in range(2):
        mats = [numpy_layer(attn[i, l][None]) for l in range(layers)]
        np.testing.assert_allclose(ours[i], np.linalg.multi_dot(mats[::-1]), rtol=1e-10)


def test_row_normalise_divides_rows_and_keeps_zero_rows():
    a = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    torch.testing.assert_close(row_normalise(a), torch.tensor([[0.25, 0.75], [0.0, 0.0]]))


def test_rollout_through_a_pooling_layer_composes_with_the_assignment():
    """A pooling block's residual is the pooling assignment: the rollout is rectangular, and
    with attention equal to that assignment the pooled token spreads evenly over its window."""
    p = pooling_assignment(8, 4)  # 2 output tokens, windows of 4
    assert p.shape == (2, 8) and torch.equal(p.sum(-1), torch.ones(2))
    rng = np.random.default_rng(3)
    stage0 = torch.from_numpy(random_attention(rng, 2, 8, 8)).float()  # local stage, 2 heads
    pool_attn = p.expand(2, 2, 8)  # heads attend exactly to their window
    stage1 = torch.from_numpy(random_attention(rng, 2, 2, 2)).float()
    r = rollout([stage0, pool_attn, stage1], residuals=[None, p, None])
    assert r.shape == (2, 8)
    expected = layer_matrix(stage1) @ row_normalise(p + p) @ layer_matrix(stage0)
    torch.testing.assert_close(r, expected)
    torch.testing.assert_close(r.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="needs a residual"):
        rollout([pool_attn])


def test_minmax_rows_for_display():
    r = torch.tensor([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(minmax_rows(r), torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]))
