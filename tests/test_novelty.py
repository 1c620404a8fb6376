"""Sparseness against a NumPy brute-force reference (both rules, several chunk sizes), hand-worked
values, invalid members."""

import jax
import jax.numpy as jnp
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
    assert novelty.auto_chunk(100_000) == 65  # 6.5M scores: a block stays in L3
    assert novelty.auto_chunk(10_000) == 650
    assert novelty.auto_chunk(1_000_000) == 64  # at least 64 rows
    assert novelty.auto_chunk(10) == 10
    assert novelty.auto_chunk(1) == 1


@pytest.mark.parametrize("shape,m,group", [((3, 1024), 5, 16), ((2, 4096), 38, 16), ((5, 640), 7, 8),
                                           ((4, 2048), 31, 32), ((2, 64), 5, 16), ((3, 1000), 5, 16), ((3, 1001), 9, 16), ((2, 3333), 40, 16)])
def test_group_top_k_is_top_k_ties_included(shape, m, group):
    """Same values and indices as one ``lax.top_k``, with many ties (8 distinct values), -inf and the
    no-score sentinel; widths that are not a multiple of the group (a tail), and where it falls back (too few groups)."""
    rng = np.random.default_rng(m)
    x = rng.integers(0, 8, size=shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = -np.inf
    x[rng.random(shape) < 0.2] = novelty.NO_SCORE
    x[0, :] = -np.inf  # a row with nothing to pick: the lowest indices, in order
    x[-1, : shape[1] // 2] = 3.0  # long runs of equal values
    want_v, want_i = jax.lax.top_k(jnp.asarray(x), m)
    got_v, got_i = novelty.group_top_k(jnp.asarray(x), m, group)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_i, want_i)


def test_group_top_k_on_distinct_values_hand_worked():
    # groups of 4: [0 1 2 3] [4 5 6 7] [8 9 10 11] ...; the 2 best are in groups 2 and 5.
    x = np.zeros((1, 48), np.float32)
    x[0, 9], x[0, 22] = 5.0, 7.0
    v, i = novelty.group_top_k(jnp.asarray(x), 2, 4)
    np.testing.assert_array_equal(v, [[7.0, 5.0]])
    np.testing.assert_array_equal(i, [[22, 9]])


def _dup_pool(p, d, seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(p, d)).astype(np.float32)
    emb[p // 2: p // 2 + 40] = emb[:40]  # exact duplicates: ties in the exact distances
    emb[7] = np.nan  # invalid member
    return emb


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
def test_group_screen_gives_what_one_top_k_gives(rule, monkeypatch):
    """The two-level screen picks the same neighbours (distances and indices) as ``lax.top_k`` over
    every column, at a size where the groups are used (1,500 columns, 16 per group)."""
    emb = _dup_pool(1500, 16, 3)
    pool, pool_sq, ok = novelty.prepare(emb)
    ids = jnp.arange(200, dtype=jnp.int32)
    fn = jax.jit(lambda r, i: novelty.block_fn(pool, pool_sq, ok, 12, rule)(r, i))
    got = fn(pool[:200], ids)
    monkeypatch.setattr(novelty, "group_top_k", lambda s, m, group=16: jax.lax.top_k(s, m))
    fn = jax.jit(lambda r, i: novelty.block_fn(pool, pool_sq, ok, 12, rule)(r, i))
    want = fn(pool[:200], ids)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
def test_sparseness_with_groups_matches_brute_force_and_ignores_block_size(rule):
    emb = _dup_pool(1200, 8, 4)
    outs = [np.asarray(novelty.sparseness(emb, 6, rule, chunk)) for chunk in (None, 7, 300)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])  # bit for bit
    want = brute_force(np.nan_to_num(emb), 6, rule, valid=~np.isnan(emb).any(-1))
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-5)


def test_duplicate_neighbour_ties_go_to_the_lower_index():
    emb = _dup_pool(1500, 16, 5)
    pool, pool_sq, ok = novelty.prepare(emb)
    d2, idx = jax.jit(lambda r, i: novelty.block_fn(pool, pool_sq, ok, 3, "nearest")(r, i))(
        pool[750:751], jnp.array([750], jnp.int32))  # row 750 is a copy of row 0
    assert float(d2[0, 0]) == 0.0 and int(idx[0, 0]) == 0


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
