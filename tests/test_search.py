"""The generation step: determinism, scan == step, selection invariants, caching, NaN handling,
identity keys (chunking changes nothing with noise on)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import config, individuals, novelty, search
from lvns_jax.assemble import assemble
from lvns_jax.models import Models, toy

BASE = dict(rave="toy", embedder="toy", container_size=12, breed_size=6, k=4, latent_channels=3,
            latent_frames=8, chunk_size=4, progress=False)


def cfg(**kw):
    return config.from_dict({**BASE, **kw})


def start(c, models=None):
    """(the assembled search, its initial state)."""
    e = assemble(c, models)
    return e, e.init()


def arrays(state):
    a = state.evolution_arrays()
    for k in ("key", "id_key"):
        a[k] = jax.random.key_data(a[k])
    return {k: np.asarray(v) for k, v in a.items() if k != "archive"}


def assert_same(s1, s2):
    a1, a2 = arrays(s1), arrays(s2)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)


def test_same_seed_same_run_and_other_seed_differs():
    c = cfg()
    (e, s1), (_, s2) = start(c), start(c)
    for _ in range(3):
        s1, _ = e.step(s1)
        s2, _ = e.step(s2)
    assert_same(s1, s2)
    e3, s3 = start(c.replace(seed=1))
    s3, _ = e3.step(s3)
    assert not np.array_equal(np.asarray(s3.latents), np.asarray(s1.latents))


def test_scan_block_equals_repeated_step():
    e, s = start(cfg())
    a = s
    ms = []
    for _ in range(4):
        a, m = e.step(a)
        ms.append(m)
    b, mb = e.run_block(s, 4)
    assert_same(a, b)
    np.testing.assert_array_equal(mb["sparseness_mean"], [m["sparseness_mean"] for m in ms])


@pytest.mark.parametrize("rule", ["nearest", "farthest"])
def test_survivors_are_the_most_sparse_of_the_pool(rule):
    c = cfg(sparseness_rule=rule, noise=False)
    e, s = start(c)
    s, _ = e.step(s)
    # Recompute one generation by hand from the state before it: the paper's operators on their own.
    from lvns_jax import operators

    _, k_emit, _ = jax.random.split(s.key, 3)
    n, b, t = c.container_size, c.breed_size, c.latent_frames
    k1, k2, k3 = jax.random.split(k_emit, 3)
    first, second = jax.random.permutation(k1, n)[:b], jax.random.permutation(k2, n)[:b]
    point = jax.random.randint(k3, (), 1, t - 2)
    keys = individuals.stream(individuals.individual_keys(s.id_key, 2, jnp.arange(b)), individuals.MUTATION)
    col = [jax.random.randint(jax.random.split(kk, 3)[1], (), 0, t - 1) for kk in keys]
    val = [jax.random.normal(jax.random.split(kk, 3)[2], (1, c.latent_channels))[0] for kk in keys]
    children = operators.mutate(operators.crossover(s.latents[first], s.latents[second], jnp.full((b,), point)),
                                jnp.stack(col), jnp.stack(val), "add")
    child_emb = toy.embed(toy.embedder_params(), toy.decode(toy.decoder_params(3), children, None))
    pool_emb = np.concatenate([np.asarray(s.embeddings), np.asarray(child_emb)])
    pool_lat = np.concatenate([np.asarray(s.latents), np.asarray(children)])
    sp = np.asarray(novelty.sparseness(pool_emb, c.k, rule))
    order = np.lexsort((np.arange(len(sp)), -sp))[: c.container_size]
    s2, m = e.step(s)
    np.testing.assert_allclose(np.asarray(s2.latents), pool_lat[order], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s2.sparseness), sp[order], rtol=1e-6)
    assert int(m["new_survivors"]) == int(np.sum(order >= c.container_size))
    # born: container members keep their birth generation, new children are born now
    assert np.all(np.asarray(s2.born)[order >= c.container_size] == 2)
    # slot: a child's index among its generation's children; members keep theirs
    np.testing.assert_array_equal(np.asarray(s2.slot)[order >= n], order[order >= n] - n)


def test_cached_embeddings_match_reembedding_without_noise():
    c = cfg(noise=False)
    e, s = start(c)
    for _ in range(3):
        s, _ = e.step(s)
    emb, ok = search.evaluate(e, s.latents, s.identity_keys())
    assert bool(ok.all())
    np.testing.assert_allclose(np.asarray(s.embeddings), np.asarray(emb), rtol=1e-5, atol=1e-6)


def test_reevaluate_container_equals_cached_without_noise():
    e1, s_cached = start(cfg(noise=False))
    e2, s_reeval = start(cfg(noise=False, reevaluate_container=True))
    for _ in range(3):
        s_cached, _ = e1.step(s_cached)
        s_reeval, _ = e2.step(s_reeval)
    np.testing.assert_array_equal(np.asarray(s_cached.latents), np.asarray(s_reeval.latents))


def test_reevaluate_container_with_noise_changes_embeddings():
    e, s = start(cfg(noise=True, reevaluate_container=True))
    s1, _ = e.step(s)
    ec, s_c = start(cfg(noise=True))
    s1c, _ = ec.step(s_c)
    # With a noisy decoder the re-embedded container differs from the cached one.
    assert not np.allclose(np.asarray(s1.sparseness), np.asarray(s1c.sparseness))


def test_container_stays_sorted_and_sparseness_grows():
    e, s = start(cfg(container_size=20, breed_size=10, k=5, mutation_scale=2.0))
    first = float(jnp.mean(s.sparseness))
    s, m = e.run_block(s, 15)
    sp = np.asarray(s.sparseness)
    assert np.all(np.diff(sp) <= 0)  # survivors are kept most sparse first
    assert float(m["sparseness_mean"][-1]) > first


def test_random_and_replace_selection():
    e, s = start(cfg(selection="random"))
    s, m = e.step(s)
    assert s.latents.shape == (12, 3, 8)
    e, s = start(cfg(selection="replace", breed_size=12))
    s1, m = e.step(s)
    assert int(m["new_survivors"]) == 12 and np.all(np.asarray(s1.born) == 1)


def _nan_decode(params, z, key, threshold):
    audio = toy.decode(params, z, key)
    bad = z[:, 0, 0] > threshold  # deterministic "broken" region of latent space
    return jnp.where(bad[:, None], jnp.nan, audio)


def test_nan_children_never_survive_and_are_counted():
    c = cfg(container_size=16, breed_size=16, k=4, init="normal")
    models = Models(decoder_params=toy.decoder_params(3), embedder_params=toy.embedder_params(),
                    decode=functools.partial(_nan_decode, threshold=0.3), embed=toy.embed,
                    sample_rate=16000, hop=toy.TOY_HOP, latent_channels=3)
    # initial container: only latents outside the broken region
    e, s = start(c, models)
    z = np.array(s.latents)
    z[:, 0, 0] = -np.abs(z[:, 0, 0]) - 0.5
    s = s.replace(latents=jnp.asarray(z))
    s = s.replace(embeddings=search.evaluate(e, s.latents, s.identity_keys())[0])
    total = 0
    for _ in range(6):
        s, m = e.step(s)
        total += int(m["invalid_children"])
        assert np.all(np.isfinite(np.asarray(s.embeddings)))
        assert np.all(np.isfinite(np.asarray(s.sparseness)))
        assert np.all(np.asarray(s.latents)[:, 0, 0] <= 0.3)
    assert total > 0 and int(s.invalid_total) == total


def test_balanced_chunks_hand_worked():
    x = jnp.arange(100 * 2).reshape(100, 2)
    assert individuals.num_chunks(100, 32) == 4 and individuals.num_chunks(3, 32) == 1
    seen = []

    def fn(xc):
        seen.append(xc.shape)
        return xc * 2

    out = individuals.map_individuals(fn, (x,), 32)
    assert seen == [(25, 2)]  # 4 x 25, no padded rows
    np.testing.assert_array_equal(out, x * 2)
    seen.clear()
    np.testing.assert_array_equal(individuals.map_individuals(fn, (jnp.arange(10),), 4), jnp.arange(10) * 2)
    assert seen == [(4,)]  # 3 chunks of 4: 10 rows + 2 padded (repeats of row 0), cut off again


@pytest.mark.parametrize("extra", [dict(), pytest.param(dict(knn="incremental"), marks=pytest.mark.slow),
                                   pytest.param(dict(archive="threshold", archive_size=12), marks=pytest.mark.slow),
                                   pytest.param(dict(gradient_fraction=0.5, gradient_steps=2), marks=pytest.mark.slow)])
def test_chunk_sizes_give_the_same_run_with_noise_on(extra):
    """Every random draw of an individual comes from its identity key: chunk_size and knn_chunk are
    memory knobs only, decoder noise on."""
    runs = []
    for chunk, knn_chunk in ((1, 0), (7, 5), (32, 0)):
        e, s = start(cfg(noise=True, chunk_size=chunk, knn_chunk=knn_chunk, **extra))
        s, m = e.run_block(s, 4)
        runs.append((s, m))
    (a, ma) = runs[0]
    for b, mb in runs[1:]:
        np.testing.assert_array_equal(np.asarray(a.born), np.asarray(b.born))
        np.testing.assert_array_equal(np.asarray(a.slot), np.asarray(b.slot))
        np.testing.assert_allclose(np.asarray(a.latents), np.asarray(b.latents), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(a.sparseness), np.asarray(b.sparseness), rtol=1e-5)
        np.testing.assert_array_equal(ma["new_survivors"], mb["new_survivors"])


def test_identity_keys_are_per_individual_and_the_wav_is_the_embedded_sound():
    c = cfg(noise=True)
    e, s = start(c)
    s, _ = e.run_block(s, 3)
    keys = s.identity_keys()
    data = np.asarray(jax.random.key_data(keys))
    assert len({tuple(r) for r in data.reshape(len(data), -1)}) == c.container_size  # all distinct
    # decoding a member with its identity reproduces the embedding it was selected with
    audio = e.decode_members(s.id_key, s.latents, s.born, s.slot)
    emb = toy.embed(toy.embedder_params(), audio)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(s.embeddings), rtol=1e-5, atol=1e-6)
    # another individual's key gives another sound (the noise is live)
    other = e.decode_members(s.id_key, s.latents, s.born, (np.asarray(s.slot) + 1) % 12)
    assert not np.allclose(np.asarray(other), np.asarray(audio))


def test_plugins_are_static_and_the_config_is_not_in_the_state():
    from lvns_jax import plugins

    e, s = start(cfg())
    assert not hasattr(s, "config")
    leaves = jax.tree_util.tree_leaves(e)
    assert all(isinstance(x, jax.Array) for x in leaves)  # only model parameters are leaves
    for kind in plugins.KINDS:
        assert plugins.names(kind)
    from lvns_jax.assemble import check

    with pytest.raises(config.ConfigError, match="^selection: 'bogus_rule' is not one of novelty, random, replace"):
        check(cfg(selection="bogus_rule"))
    with pytest.raises(config.ConfigError, match="^archive:"):
        assemble(cfg(archive="grid"))


def test_a_stop_request_takes_effect_within_one_generation():
    """run_block checks the host's stop flag before every generation (io_callback): once it is set the
    rest of the block is skipped (state unchanged, metrics NaN / -1), so a signal costs < 1 generation."""
    e, s = start(cfg())
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2

    s5, m = search.run_block(e, s, 6, stop_after_two)
    assert int(s5.generation) == 2
    np.testing.assert_array_equal(np.asarray(m["generation"]), [1, 2, -1, -1, -1, -1])
    assert np.isnan(np.asarray(m["sparseness_mean"])[2:]).all()
    ref, _ = e.run_block(s, 2)  # the two generations done are the ordinary ones
    assert_same(s5, ref)
    never, mn = search.run_block(e, s, 3, lambda: False)
    ref3, _ = e.run_block(s, 3)
    assert_same(never, ref3)
