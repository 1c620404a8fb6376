"""Novelty archive (lvns_jax.archive): sparseness against container + children + archive (NumPy
reference on fixed clouds, brute and incremental), insertion rules, the ring, threshold adaptation,
the step and TensorBoard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import archive as archive_lib
from lvns_jax import config, scoring
from lvns_jax.assemble import assemble

BASE = dict(rave="toy", embedder="toy", container_size=16, breed_size=8, k=4, latent_channels=3,
            latent_frames=8, chunk_size=4, progress=False)


def cfg(**kw):
    return config.from_dict({**BASE, **kw})


def reference(pool, pool_ids, arch, arch_ids, k, rule="nearest"):
    """NumPy: each pool row's sparseness over pool (minus itself) + archive (minus its own copy)."""
    pool, arch = np.asarray(pool, np.float64), np.asarray(arch, np.float64)
    out = []
    for i, x in enumerate(pool):
        d = [np.linalg.norm(x - y) for j, y in enumerate(pool) if j != i or rule == "farthest"]
        d += [np.linalg.norm(x - y) for j, y in enumerate(arch) if arch_ids[j] != pool_ids[i]]
        d = np.sort(d)
        out.append(d[:k].mean() if rule == "nearest" else d[-k:].mean())
    return np.array(out)


def cloud(seed, n, b, a, dim=5, dup=True):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n + b, dim)).astype(np.float32)
    if dup:
        pool[3] = pool[7]  # duplicates: ties
    arch = rng.normal(size=(a, dim)).astype(np.float32)
    pool_ids = [(0, i) for i in range(n)] + [(1, j) for j in range(b)]
    arch_ids = [(2, 50 + j) for j in range(a)]  # identities of earlier generations
    arch_ids[2] = pool_ids[n + 1]  # child 1 is also in the archive: never its own neighbour
    arch[2] = pool[n + 1]
    return pool, pool_ids, arch, arch_ids


def archive_state(arch, arch_ids, capacity):
    a = len(arch)
    st = archive_lib.empty(capacity, 1, 1, arch.shape[1], 0.0)
    born = np.full(capacity, -1, np.int32)
    slot = np.full(capacity, -1, np.int32)
    born[:a], slot[:a] = zip(*arch_ids)
    emb = np.full((capacity, arch.shape[1]), np.nan, np.float32)
    emb[:a] = arch
    return st.replace(embeddings=jnp.asarray(emb), born=jnp.asarray(born), slot=jnp.asarray(slot), size=jnp.int32(a))


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
@pytest.mark.parametrize("seed", [0, 1])
def test_brute_sparseness_against_container_children_and_archive(rule, seed):
    n, b, a, k = 12, 6, 7, 4
    pool, pool_ids, arch, arch_ids = cloud(seed, n, b, a)
    st = archive_state(arch, arch_ids, capacity=10)  # 3 empty rows: never neighbours
    scorer = scoring.BruteForce(k=k, rule=rule, chunk=5)
    ids = tuple(jnp.asarray(x, jnp.int32) for x in zip(*pool_ids))
    sp, _ = jax.jit(lambda c, ch: scorer.score(None, c, ch, st, ids, None))(pool[:n], pool[n:])
    np.testing.assert_allclose(np.asarray(sp), reference(pool, pool_ids, arch, arch_ids, k, rule), rtol=1e-5)
    # without an archive: the plain pool sparseness
    sp0, _ = scorer.score(None, jnp.asarray(pool[:n]), jnp.asarray(pool[n:]), None, ids, None)
    np.testing.assert_allclose(np.asarray(sp0), reference(pool, pool_ids, arch[:0], [], k, rule), rtol=1e-5)


def test_incremental_equals_brute_with_an_archive_bit_for_bit():
    n, b, a, k = 12, 6, 7, 4
    pool, pool_ids, arch, arch_ids = cloud(3, n, b, a)
    st = archive_state(arch, arch_ids, capacity=8)
    ids = tuple(jnp.asarray(x, jnp.int32) for x in zip(*pool_ids))
    brute = scoring.BruteForce(k=k)
    inc = scoring.Incremental(k=k, width=2 * k, chunk=4)
    sb, _ = brute.score(None, jnp.asarray(pool[:n]), jnp.asarray(pool[n:]), st, ids, None)
    si, _ = inc.score(inc.derive(jnp.asarray(pool[:n])), jnp.asarray(pool[:n]), jnp.asarray(pool[n:]), st, ids, None)
    np.testing.assert_array_equal(np.asarray(sb), np.asarray(si))
    np.testing.assert_allclose(np.asarray(si), reference(pool, pool_ids, arch, arch_ids, k), rtol=1e-5)


def test_threshold_insertion_ring_and_cap():
    arch = archive_lib.ThresholdArchive(capacity=4, threshold=0.5)
    st = arch.init(1, 2, 3, jnp.zeros(5))
    assert float(st.threshold) == 0.5 and int(st.size) == 0
    z = jnp.arange(6, dtype=jnp.float32)[:, None, None] * jnp.ones((6, 1, 2))
    emb = jnp.arange(18, dtype=jnp.float32).reshape(6, 3)
    sp = jnp.array([0.9, 0.1, 0.7, 0.6, 0.2, 0.55])
    ok = jnp.array([True, True, True, False, True, True])  # child 3 is invalid: never enters
    keys = jax.random.split(jax.random.key(0), 6)
    born, slot = jnp.full((6,), 1, jnp.int32), jnp.arange(6, dtype=jnp.int32)
    st, m = arch.add(st, z, emb, sp, ok, keys, born, slot)
    # entering: children 0 (0.9), 2 (0.7), 5 (0.55), most sparse first
    assert int(m["archive_insertions"]) == 3 and int(st.size) == 3 and int(st.next) == 3
    np.testing.assert_array_equal(np.asarray(st.slot), [0, 2, 5, -1])
    np.testing.assert_array_equal(np.asarray(st.latents)[:3, 0, 0], [0, 2, 5])
    # next generation: 3 enter again, the ring overwrites the oldest (rows 0 and 1)
    st, m = arch.add(st, z, emb, sp, ok, keys, born + 1, slot)
    assert int(st.size) == 4 and int(st.next) == 2 and int(st.inserted_total) == 6
    np.testing.assert_array_equal(np.asarray(st.born), [2, 2, 1, 2])
    np.testing.assert_array_equal(np.asarray(st.slot), [2, 5, 5, 0])
    # more candidates than capacity in one generation: the 4 most sparse enter
    big = archive_lib.ThresholdArchive(capacity=2, threshold=0.05)
    st2, m2 = big.add(big.init(1, 2, 3, jnp.zeros(5)), z, emb, sp, jnp.ones(6, bool), keys, born, slot)
    assert int(m2["archive_insertions"]) == 2
    np.testing.assert_array_equal(np.asarray(st2.slot), [0, 2])


def test_threshold_adapts_to_the_target_rate_and_defaults_to_the_median():
    arch = archive_lib.ThresholdArchive(capacity=50, threshold=0.0, rate=0.25, breed_size=4)  # target 1 per gen
    st = arch.init(1, 1, 2, jnp.array([0.1, 0.2, 0.3, 0.4, jnp.nan]))
    assert float(st.threshold) == pytest.approx(0.25)  # median of the finite initial sparseness
    z, emb = jnp.zeros((4, 1, 1)), jnp.zeros((4, 2))
    keys = jax.random.split(jax.random.key(0), 4)
    b, s = jnp.ones((4,), jnp.int32), jnp.arange(4, dtype=jnp.int32)
    st1, _ = arch.add(st, z, emb, jnp.array([1.0, 1.0, 1.0, 0.0]), jnp.ones(4, bool), keys, b, s)  # 3 > 1
    assert float(st1.threshold) == pytest.approx(0.25 * 1.2)
    st2, _ = arch.add(st1, z, emb, jnp.zeros(4), jnp.ones(4, bool), keys, b, s)  # 0 < 1
    assert float(st2.threshold) == pytest.approx(0.25 * 1.2 * 0.95)
    st3, _ = arch.add(st2, z, emb, jnp.array([1.0, 0, 0, 0]), jnp.ones(4, bool), keys, b, s)  # 1 == 1
    assert float(st3.threshold) == pytest.approx(float(st2.threshold))


def test_random_archive_takes_about_its_rate_from_identity_keys():
    arch = archive_lib.RandomArchive(capacity=10000, rate=0.3)
    st = arch.init(1, 1, 2, jnp.zeros(3))
    n = 2000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(n))
    st, m = arch.add(st, jnp.zeros((n, 1, 1)), jnp.zeros((n, 2)), jnp.zeros(n), jnp.ones(n, bool), keys,
                     jnp.ones(n, jnp.int32), jnp.arange(n, dtype=jnp.int32))
    assert abs(int(m["archive_insertions"]) / n - 0.3) < 0.04


@pytest.mark.parametrize("knn", [pytest.param("brute", marks=pytest.mark.slow), "incremental"])
def test_step_with_an_archive_matches_a_numpy_recomputation(knn):
    """One generation with an archive, redone by hand with the step's own stages: the survivors are
    the most sparse of the pool over container + children + archive (NumPy), and the children above
    the threshold entered the archive."""
    from lvns_jax import individuals, search

    c = cfg(archive="threshold", archive_size=16, knn=knn, noise=False)
    e = assemble(c)
    s, _ = e.run_block(e.init(), 3)  # the archive has members now
    assert int(s.archive.size) > 0
    _, k_emit, _ = jax.random.split(s.key, 3)
    b, n = c.breed_size, c.container_size
    cb, cs = jnp.full((b,), 4, jnp.int32), jnp.arange(b, dtype=jnp.int32)
    ck = individuals.individual_keys(s.id_key, cb, cs)
    children, _ = search.emit(e, s, k_emit, ck)
    child_emb, _ = search.evaluate(e, children, ck)
    pool = np.concatenate([np.asarray(s.embeddings), np.asarray(child_emb)])
    pool_ids = list(zip(np.asarray(s.born), np.asarray(s.slot))) + [(4, j) for j in range(b)]
    valid = np.asarray(s.archive.valid())
    arch_ids = list(zip(np.asarray(s.archive.born)[valid], np.asarray(s.archive.slot)[valid]))
    ref = reference(pool, pool_ids, np.asarray(s.archive.embeddings)[valid], arch_ids, c.k)
    order = np.lexsort((np.arange(len(ref)), -ref))[:n]
    s2, m = e.step(s)
    np.testing.assert_allclose(np.asarray(s2.sparseness), ref[order], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(s2.born), [pool_ids[i][0] for i in order])
    entered = np.asarray(s2.archive.born) == 4
    assert int(m["archive_insertions"]) == int(entered.sum()) == int(np.sum(ref[n:] > float(s.archive.threshold)))
    np.testing.assert_array_less(float(s.archive.threshold), np.asarray(s2.archive.sparseness)[entered])


def test_archive_runs_scan_equals_step_and_is_deterministic():
    c = cfg(archive="threshold", archive_size=8, archive_rate=0.25)
    e = assemble(c)
    s0 = e.init()
    a = s0
    for _ in range(4):
        a, _ = e.step(a)
    b, m = e.run_block(s0, 4)
    for f in ("embeddings", "born", "slot", "sparseness"):
        np.testing.assert_array_equal(np.asarray(getattr(a.archive, f)), np.asarray(getattr(b.archive, f)))
    assert m["archive_size"].shape == (4,) and np.all(np.diff(m["archive_size"]) >= 0)
    assert float(m["archive_threshold"][-1]) > 0
