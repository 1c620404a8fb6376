"""Incremental kNN (lvns_jax.knn_incremental) against the brute-force path: same sparseness to the
last bit and the same survivors over many generations, with ties (duplicate embeddings, distances on
an integer grid) and NaN children; shape-independent exact distances; config validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import config, knn_incremental, novelty, selection
from lvns_jax.assemble import assemble
from lvns_jax.errors import ConfigError

N, B, D, K = 40, 12, 6, 5


def _children(seed, gens, kind):
    """Children embeddings for ``gens`` generations: duplicates of each other and NaN rows included."""
    rng = np.random.default_rng(seed)
    if kind == "grid":  # tiny integer grid: many exact duplicates and equal distances (ties everywhere)
        ch = rng.integers(-2, 3, size=(gens, B, D)).astype(np.float32)
    else:
        ch = (rng.normal(size=(gens, B, D)) * 3 + 1).astype(np.float32)
        ch[:, 1] = ch[:, 0]  # a duplicated child every generation
    nan_rows = rng.random((gens, B)) < 0.15
    ch[nan_rows] = np.nan
    ch[:, -1, 2] = np.inf  # and one invalid child every generation
    return ch


def _initial(seed, kind):
    rng = np.random.default_rng(seed + 100)
    if kind == "grid":
        e = rng.integers(-2, 3, size=(N, D)).astype(np.float32)
    else:
        e = (rng.normal(size=(N, D)) * 3 + 1).astype(np.float32)
        e[5] = e[4]
        e[9] = e[4]  # a triple of duplicates in the container
    return e


@functools.partial(jax.jit, static_argnames=("chunk", "width", "rev", "slots"))
def _run_both(cont0, children, chunk, width, rev=None, slots=None):
    """Brute force and incremental side by side, each with its own container (they must not diverge)."""
    lists0 = knn_incremental.build(cont0, width, chunk)

    def gen(carry, ch):
        cb, ci, lists = carry
        pool_b = jnp.concatenate([cb, ch])
        sp_b = novelty.sparseness(pool_b, K, "nearest", chunk)
        surv_b = selection.most_sparse(sp_b, N)
        pool_i = jnp.concatenate([ci, ch])
        sp_i, pool_lists = knn_incremental.pool_knn(lists, pool_i, N, K, chunk, rev, slots)
        surv_i = selection.most_sparse(sp_i, N)
        lists = knn_incremental.update(pool_lists, pool_i, surv_i, K, chunk)
        fresh = knn_incremental.build(pool_i[surv_i], K, chunk)  # k nearest must equal a from-scratch build
        out = dict(sp_b=sp_b, sp_i=sp_i, surv_b=surv_b, surv_i=surv_i, d2=lists.d2[:, :K], d2_fresh=fresh.d2,
                   recomputed=lists.recomputed)
        return (pool_b[surv_b], pool_i[surv_i], lists), out

    _, outs = jax.lax.scan(gen, (cont0, cont0, lists0), children)
    return outs


@pytest.mark.parametrize("kind,chunk,width", [("grid", None, K), ("grid", None, 2 * K), ("continuous", 7, K),
                                              pytest.param("continuous", None, 2 * K, marks=pytest.mark.slow)])
def test_incremental_equals_brute_force_over_60_generations(kind, chunk, width):
    """width = K: the plain algorithm (recompute on any loss); 2K: spare neighbours (the default)."""
    gens = 60
    out = jax.device_get(_run_both(jnp.asarray(_initial(0, kind)), jnp.asarray(_children(1, gens, kind)), chunk,
                                   width))
    # same survivors every generation, same sparseness to the last bit
    np.testing.assert_array_equal(out["surv_i"], out["surv_b"])
    np.testing.assert_array_equal(out["sp_i"], out["sp_b"])
    # the carried lists are exactly the lists of the new container
    np.testing.assert_array_equal(out["d2"], out["d2_fresh"])
    # NaN/inf children never survive, and the test exercises both kept and recomputed lists
    assert np.all(out["sp_b"][:, N + B - 1] == -np.inf)
    assert np.all(out["surv_b"] != N + B - 1)
    assert 0 < out["recomputed"].sum() < gens * N
    assert (out["recomputed"] < N).all()  # never a full rebuild
    if kind == "grid":  # ties are really there: equal sparseness values among the selected
        assert any(len(np.unique(s)) < len(s) for s in out["sp_b"][:, :N])


@pytest.mark.parametrize("kind", ["grid", "continuous"])
@pytest.mark.parametrize("rev,slots", [(2, 1), (1, 3), (5, 2)])
def test_tiny_caps_change_work_not_results(kind, rev, slots):
    """Caps on the pairs per child (rev) and per container row (slots) far below what a generation
    brings: bounds are lowered and rows recomputed, and the results stay those of brute force."""
    gens = 25
    out = jax.device_get(_run_both(jnp.asarray(_initial(2, kind)), jnp.asarray(_children(3, gens, kind)), None,
                                   2 * K, rev, slots))
    np.testing.assert_array_equal(out["surv_i"], out["surv_b"])
    np.testing.assert_array_equal(out["sp_i"], out["sp_b"])
    np.testing.assert_array_equal(out["d2"], out["d2_fresh"])
    assert out["recomputed"].sum() > 0


def test_many_surviving_hubs_fall_back_to_the_pool_bounds(monkeypatch):
    """More surviving hubs than the update re-checks one by one: the pool pass's lowered bounds are
    used (the other branch of the update); still the results of brute force."""
    monkeypatch.setattr(knn_incremental, "HUB_CHECK", 1)
    out = jax.device_get(_run_both(jnp.asarray(_initial(4, "continuous")),
                                   jnp.asarray(_children(5, 20, "continuous")), 5, 2 * K, 1, 1))
    np.testing.assert_array_equal(out["surv_i"], out["surv_b"])
    np.testing.assert_array_equal(out["sp_i"], out["sp_b"])
    np.testing.assert_array_equal(out["d2"], out["d2_fresh"])


def test_pair_tiers_hand_worked():
    """Widths rev/4, rev, 8 rev for c, ~3c/8, ~c/8 children (at least 8), cut where a width covers the
    container."""
    assert knn_incremental.pair_tiers(64, 100_000, 240) == [(64, 60), (24, 240), (8, 1920)]
    assert knn_incremental.pair_tiers(64, 100, 240) == [(64, 60), (24, 100)]
    assert knn_incremental.pair_tiers(64, 50, 240) == [(64, 50)]
    assert knn_incremental.pair_tiers(4, 1000, 2) == [(4, 1), (4, 2), (4, 16)]


def test_merge_sorted_hand_worked():
    inf = np.inf
    a_d = jnp.array([[1.0, 3.0, 5.0, inf], [2.0, 2.0, inf, inf]])
    a_i = jnp.array([[10, 11, 12, -1], [20, 21, -1, -1]], jnp.int32)
    e_d = jnp.array([[0.5, 3.0, inf], [2.0, 9.0, inf]])
    e_i = jnp.array([[30, 31, -1], [40, 41, -1]], jnp.int32)
    d2, idx, dropped = knn_incremental.merge_sorted(a_d, a_i, e_d, e_i, 4)
    np.testing.assert_array_equal(d2, [[0.5, 1.0, 3.0, 3.0], [2.0, 2.0, 2.0, 9.0]])
    np.testing.assert_array_equal(idx, [[30, 10, 11, 31], [20, 21, 40, 41]])  # ties: the stored list first
    np.testing.assert_array_equal(dropped, [5.0, inf])


def test_slots_hand_worked_with_and_without_compaction():
    """Pairs (row, d2, child), +inf = no pair: per row ascending (ties: lower child first), w = 2 slots,
    the first pair that did not fit; the same whether the pairs are gathered first (cap >= pairs), or
    all entries sorted (no cap, or more pairs than the cap)."""
    inf = np.inf
    rows = jnp.array([2, 0, 1, 0, 2, 0, 3, 2, 0], jnp.int32)
    d2 = jnp.array([4.0, 3.0, inf, 1.0, 4.0, 2.0, inf, 5.0, inf], jnp.float32)
    child = jnp.array([17, 11, 12, 13, 15, 16, 19, 18, 14], jnp.int32)
    want_d2 = [[1.0, 2.0], [inf, inf], [4.0, 4.0], [inf, inf]]
    want_idx = [[13, 16], [-1, -1], [15, 17], [-1, -1]]
    want_out = [3.0, inf, 5.0, inf]
    for cap in (None, 6, 9, 20, 5, 1):  # 6 pairs: 6, 9, 20 gather them, 5 and 1 sort all entries
        got = jax.jit(lambda r, d, c: knn_incremental._slots((r, d, c), 4, 2, cap))(rows, d2, child)
        np.testing.assert_array_equal(got[0], want_d2, err_msg=str(cap))
        np.testing.assert_array_equal(got[1], want_idx, err_msg=str(cap))
        np.testing.assert_array_equal(got[2], want_out, err_msg=str(cap))


def test_sparseness_is_bit_identical_across_chunk_sizes():
    rng = np.random.default_rng(3)
    e = (rng.normal(size=(53, 16)) * 5).astype(np.float32)
    ref = np.asarray(novelty.sparseness(e, 6, "nearest"))
    for chunk in (1, 17):
        np.testing.assert_array_equal(np.asarray(novelty.sparseness(e, 6, "nearest", chunk)), ref)
    a = jnp.asarray(e)
    full = np.asarray(novelty.exact_sq_dist(a[:, None, :], a[None, :, :]))
    part = np.asarray(novelty.exact_sq_dist(a[3:9, None, :], a[None, 10:40, :]))
    np.testing.assert_array_equal(part, full[3:9, 10:40])
    np.testing.assert_array_equal(full, full.T)
    np.testing.assert_allclose(full, ((e[:, None] - e[None]) ** 2).sum(-1), rtol=1e-5)


def test_build_matches_numpy_neighbours():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(30, 4)).astype(np.float32)
    e[7] = np.nan
    lists = knn_incremental.build(jnp.asarray(e), 4)
    d = ((e[:, None].astype(np.float64) - e[None]) ** 2).sum(-1)
    d[:, 7] = np.inf
    np.fill_diagonal(d, np.inf)
    for i in range(30):
        if i == 7:
            continue
        np.testing.assert_allclose(np.asarray(lists.d2[i]), np.sort(d[i])[:4], rtol=1e-5)
        assert set(np.asarray(lists.idx[i])) == set(np.argsort(d[i], kind="stable")[:4])
        assert 7 not in np.asarray(lists.idx[i])


def test_lists_wider_than_the_container_are_padded():
    e = jnp.asarray(np.arange(8, dtype=np.float32).reshape(4, 2))
    lists = knn_incremental.build(e, 6)
    assert lists.d2.shape == (4, 6) and np.all(np.isinf(np.asarray(lists.bound)))  # complete lists
    assert np.all(np.isinf(np.asarray(lists.d2[:, 3:]))) and np.all(np.asarray(lists.idx[:, 3:]) == -1)


BASE = dict(rave="toy", vggish="toy", container_size=12, breed_size=6, k=4, latent_channels=3,
            latent_frames=8, chunk_size=3, progress=False, devices=1)


@pytest.mark.slow  # (the 8-device subprocess of test_distributed.py covers this path by default)
def test_search_step_incremental_equals_brute():
    cb = config.from_dict({**BASE, "knn": "brute"})
    ci = cb.replace(knn="incremental")
    eb, ei = assemble(cb), assemble(ci)
    sb, si = eb.init(), ei.init()
    assert sb.knn is None and si.knn is not None
    sb, _ = eb.run_block(sb, 6)
    si, mi = ei.run_block(si, 6)
    for f in ("latents", "embeddings", "sparseness", "born"):
        np.testing.assert_array_equal(np.asarray(getattr(si, f)), np.asarray(getattr(sb, f)), err_msg=f)
    assert "knn_recomputed" in mi and mi["knn_recomputed"].shape == (6,)


def test_config_validation():
    from lvns_jax.assemble import check

    with pytest.raises(ConfigError, match="sparseness_rule.*nearest"):
        check(config.from_dict({**BASE, "knn": "incremental", "sparseness_rule": "farthest"}))
    with pytest.raises(ConfigError, match="reevaluate_container"):
        check(config.from_dict({**BASE, "knn": "incremental", "reevaluate_container": True}))
    with pytest.raises(ConfigError, match="knn:.*brute, incremental"):
        check(config.from_dict({**BASE, "knn": "faiss"}))
    with pytest.raises(ConfigError, match="knn_approx"):
        check(config.from_dict({**BASE, "knn_approx": 1.5}))
    with pytest.raises(ConfigError, match="knn"):
        check(config.from_dict({**BASE, "knn": "incremental", "knn_approx": 0.9}))
    with pytest.raises(ConfigError, match="knn_width"):
        check(config.from_dict({**BASE, "knn": "incremental", "knn_width": 2}))
    with pytest.raises(ConfigError, match="devices"):
        check(config.from_dict({**BASE, "devices": -1}))
    c = config.load(None, ["knn=incremental", "devices=0", "knn_approx=0", "multihost=false"])
    assert (c.knn, c.devices, c.knn_approx, c.multihost) == ("incremental", 0, 0.0, False)


def test_default_width_follows_container_size():
    from lvns_jax import scoring

    assert [knn_incremental.default_width(30, n) for n in (50, 19_999, 20_000, 10 ** 6)] == [60, 60, 120, 120]
    inc = {**BASE, "knn": "incremental"}
    assert scoring.build_incremental(config.from_dict({**inc, "container_size": 500})).width == 8
    wide = config.from_dict({**inc, "container_size": 20_000, "breed_size": 100})
    assert scoring.build_incremental(wide).width == 16
    assert scoring.build_incremental(config.from_dict({**inc, "container_size": 20_000, "knn_width": 33})).width == 33


def test_approx_screen_runs_and_has_high_recall():
    rng = np.random.default_rng(5)
    e = rng.normal(size=(200, 8)).astype(np.float32)
    exact = np.asarray(novelty.sparseness(e, 5))
    approx = np.asarray(novelty.sparseness(e, 5, approx=0.95))
    assert np.mean(np.isclose(approx, exact, rtol=1e-6)) >= 0.9
