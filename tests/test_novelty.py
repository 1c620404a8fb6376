"""Sparseness against a NumPy brute-force reference (both rules, several chunk sizes), hand-worked
values, invalid members."""

import numpy as np
import pytest

from lvns_jax import novelty


def brute_force(emb, k, rule, valid=None):
    emb = np.asarray(emb, np.float64)
    p = len(emb)
    valid = np.ones(p, bool) if valid is None else np.asarray(valid)
    d = np.sqrt(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1))
    out = np.full(p, -np.inf)
    for i in range(p):
        if not valid[i]:
            continue
        if rule == "nearest":
            others = [d[i, j] for j in range(p) if j != i and valid[j]]
            out[i] = np.mean(sorted(others)[:k])
        else:
            cand = [d[i, j] for j in range(p) if valid[j]]
            out[i] = np.mean(sorted(cand, reverse=True)[:k])
    return out


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 64])
@pytest.mark.parametrize("k", [1, 4, 19])
def test_matches_brute_force(rule, chunk, k):
    rng = np.random.default_rng(k)
    emb = rng.normal(size=(20, 5)).astype(np.float32) * 3 + 1
    got = np.asarray(novelty.sparseness(emb, k, rule, chunk))
    np.testing.assert_allclose(got, brute_force(emb, k, rule), rtol=1e-5, atol=1e-5)


def test_hand_worked_line():
    emb = np.array([[0.0], [1.0], [3.0]], np.float32)
    np.testing.assert_allclose(novelty.sparseness(emb, 1, "nearest"), [1.0, 1.0, 2.0])
    np.testing.assert_allclose(novelty.sparseness(emb, 2, "nearest"), [2.0, 1.5, 2.5])
    # farthest: k largest distances over all members, self (0) included
    np.testing.assert_allclose(novelty.sparseness(emb, 2, "farthest"), [2.0, 1.5, 2.5])
    np.testing.assert_allclose(novelty.sparseness(emb, 3, "farthest"), [4 / 3, 1.0, 5 / 3], rtol=1e-6)
    np.testing.assert_allclose(novelty.sparseness(emb, 1, "farthest"), [3.0, 2.0, 3.0])


def test_duplicates_have_zero_nearest_distance():
    emb = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, 2.0]], np.float32)
    np.testing.assert_allclose(novelty.sparseness(emb, 1, "nearest"), [0.0, 0.0, 4.0], atol=1e-6)


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
def test_invalid_members_are_excluded(rule):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 3)).astype(np.float32)
    valid = np.ones(10, bool)
    valid[[2, 7]] = False
    emb_nan = emb.copy()
    emb_nan[2] = np.nan
    emb_nan[7, 1] = np.inf
    ref = brute_force(emb, 3, rule, valid)
    for chunk in (None, 4):
        np.testing.assert_allclose(novelty.sparseness(emb, 3, rule, chunk, valid=valid), ref, rtol=1e-5)
        np.testing.assert_allclose(novelty.sparseness(emb_nan, 3, rule, chunk), ref, rtol=1e-5)


def test_fewer_valid_neighbours_than_k_averages_those_that_exist():
    emb = np.array([[0.0], [2.0], [np.nan], [np.nan]], np.float32)
    got = np.asarray(novelty.sparseness(emb, 3, "nearest"))
    np.testing.assert_allclose(got[:2], [2.0, 2.0])
    assert np.all(got[2:] == -np.inf)


def test_output_shape_dtype_and_errors():
    emb = np.zeros((6, 2), np.float32)
    out = novelty.sparseness(emb, 2)
    assert out.shape == (6,) and out.dtype == np.float32
    with pytest.raises(ValueError, match="k must be"):
        novelty.sparseness(emb, 6, "nearest")  # only 5 others
    novelty.sparseness(emb, 6, "farthest")  # self included: 6 is fine
    with pytest.raises(ValueError, match="rule"):
        novelty.sparseness(emb, 2, "median")
    with pytest.raises(ValueError, match=r"\(P, D\)"):
        novelty.sparseness(np.zeros(6, np.float32), 2)


def test_auto_chunk_bounds_block_size():
    assert novelty.auto_chunk(100_000) * 100_000 <= 1 << 26
    assert novelty.auto_chunk(10) == 10
    assert novelty.auto_chunk(1) == 1


@pytest.mark.slow
def test_100k_by_128_completes():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(100_000, 128)).astype(np.float32)
    out = np.asarray(novelty.sparseness(emb, 50, "nearest"))
    assert out.shape == (100_000,) and np.all(np.isfinite(out)) and np.all(out > 0)
    sub = rng.choice(100_000, 5, replace=False)
    for i in sub:  # spot-check rows against exact distances
        d = np.sqrt(((emb.astype(np.float64) - emb[i]) ** 2).sum(-1))
        d[i] = np.inf
        np.testing.assert_allclose(out[i], np.sort(d)[:50].mean(), rtol=1e-4)
