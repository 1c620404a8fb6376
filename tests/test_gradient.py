"""Gradient-guided novelty mutation (lvns_jax.emitters.gradient) on the tiny differentiable toy models."""

import functools

import jax
import jax.test_util  # noqa: F401  (check_grads)
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import config, individuals, operators
from lvns_jax.assemble import assemble
from lvns_jax.emitters import EmitContext, gradient
from lvns_jax.emitters.gradient import GradientEmitter
from lvns_jax.emitters.mix import MixEmitter
from lvns_jax.errors import ConfigError
from lvns_jax.models import Models, toy

BASE = dict(rave="toy", embedder="toy", container_size=16, breed_size=8, k=5, latent_channels=4,
            latent_frames=8, chunk_size=4, progress=False)


def cfg(**kw):
    return config.from_dict({**BASE, **kw})


def toy_models(channels=4, noise=False):
    return Models(decoder_params=toy.decoder_params(channels), embedder_params=toy.embedder_params(),
                  decode=toy.decode_noisy if noise else toy.decode, embed=toy.embed,
                  sample_rate=toy.TOY_SAMPLE_RATE, hop=toy.TOY_HOP, latent_channels=channels)


def knn_reference(emb, container, k, rule):
    """NumPy brute force: mean distance of each row of emb to its k nearest / farthest container rows."""
    d = np.linalg.norm(np.asarray(emb, np.float64)[:, None] - np.asarray(container, np.float64)[None], axis=-1)
    d = np.sort(d, axis=1)
    return (d[:, :k] if rule == "nearest" else d[:, -k:]).mean(1)


_evaluate = jax.jit(lambda m, z, key, c: individuals.evaluate(
    m, z, jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(z.shape[0])), c), static_argnums=3)


def num_gradient_children(c) -> int:
    e = assemble(c).emitter
    if isinstance(e, GradientEmitter):
        return c.breed_size
    if isinstance(e, MixEmitter):
        return sum(n for name, _, n in e.parts if name == "gradient")
    return 0
_improve = jax.jit(gradient.improve, static_argnames=(
    "steps", "learning_rate", "optimizer", "k", "rule", "prior_weight", "prior_bound", "chunk_size"))
_start = jax.jit(lambda key, n, b, c, t: _start_impl(key, n, b, c, t), static_argnums=(1, 2, 3, 4))


def _start_impl(key, n, b, c, t):
    k_init, k_breed = jax.random.split(key)
    cont = jax.random.normal(k_init, (n, c, t))
    _, br = operators.breed(k_breed, cont, b)
    return cont, operators.crossover(cont[br.first_parent], cont[br.second_parent], br.crossover_point)


def embed(models, z, key=None):
    emb, ok = _evaluate(models, z, jax.random.key(0) if key is None else key, 4)
    assert bool(jnp.all(ok))
    return np.asarray(emb)


# ---------------------------------------------------------------------------------------- surrogate
@pytest.mark.parametrize("rule", ["nearest", "farthest"])
def test_surrogate_equals_knn_sparseness_against_container(rule):
    rng = np.random.default_rng(0)
    emb, cont = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(20, 5)).astype(np.float32)
    got = np.asarray(gradient.surrogate_sparseness(jnp.asarray(emb), jnp.asarray(cont), 4, rule))
    np.testing.assert_allclose(got, knn_reference(emb, cont, 4, rule), rtol=1e-5)


def test_surrogate_gradient_matches_finite_differences_and_skips_invalid_rows():
    rng = np.random.default_rng(1)
    emb = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    cont = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    jax.test_util.check_grads(lambda e: gradient.surrogate_sparseness(e, cont, 3), (emb,), order=1,
                              modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)
    # a non-finite container row is never a neighbour
    bad = cont.at[0].set(jnp.nan)
    got = np.asarray(gradient.surrogate_sparseness(emb, bad, 3))
    np.testing.assert_allclose(got, knn_reference(emb, np.asarray(cont)[1:], 3, "nearest"), rtol=1e-5)


# ------------------------------------------------------------------------------------ the operator
def start_points(seed, c):
    """A container from seed and B crossed-over children of it (no random mutation)."""
    models = toy_models(c.latent_channels)
    cont, start = _start(jax.random.key(seed), c.container_size, c.breed_size, c.latent_channels, c.latent_frames)
    return models, cont, embed(models, cont), start


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 0.5)])
def test_gradient_children_are_sparser_than_their_starting_points(optimizer, lr):
    """Over 8 fixed seeds x 8 children: true kNN sparseness (re-embedded, NumPy brute force) rises on
    average, significantly (mean gain > 3 standard errors), and for most children."""
    c = cfg()
    gains = []
    for seed in range(8):
        models, cont, cont_emb, start = start_points(seed, c)
        z, info = _improve(jax.random.key(100 + seed), models, start, jnp.asarray(cont_emb), steps=5,
                                   learning_rate=lr, optimizer=optimizer, k=c.k, chunk_size=4)
        before = knn_reference(embed(models, start), cont_emb, c.k, "nearest")
        after = knn_reference(embed(models, z), cont_emb, c.k, "nearest")
        np.testing.assert_allclose(np.asarray(info.start_sparseness), before, rtol=1e-4)
        gains.append(after - before)
    gains = np.concatenate(gains)
    assert gains.size == 64
    stderr = gains.std(ddof=1) / np.sqrt(gains.size)
    assert gains.mean() > 3 * stderr, (gains.mean(), stderr)
    assert np.mean(gains > 0) > 0.75


def test_gradients_finite_with_noise_and_noise_uses_a_key_per_step():
    c = cfg()
    models, cont, cont_emb, start = start_points(3, c)
    noisy = toy_models(c.latent_channels, noise=True)
    kw = dict(steps=3, learning_rate=0.05, k=c.k, chunk_size=4, prior_weight=1.0)
    z1, info = _improve(jax.random.key(0), noisy, start, jnp.asarray(cont_emb), **kw)
    assert np.all(np.isfinite(np.asarray(z1)))
    norms = np.asarray(info.grad_norm)
    assert np.all(np.isfinite(norms)) and np.all(norms > 0)
    # the noise branch is live: another key gives other latents; the deterministic decoder ignores keys
    z2, _ = _improve(jax.random.key(1), noisy, start, jnp.asarray(cont_emb), **kw)
    assert not np.allclose(np.asarray(z1), np.asarray(z2))
    d1, _ = _improve(jax.random.key(0), models, start, jnp.asarray(cont_emb), **kw)
    d2, _ = _improve(jax.random.key(1), models, start, jnp.asarray(cont_emb), **kw)
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_jit_equals_eager():
    c = cfg()
    _, _, cont_emb, start = start_points(5, c)
    noisy = toy_models(c.latent_channels, noise=True)

    def f(key, z, e):
        return gradient.improve(key, noisy, z, e, steps=2, learning_rate=0.05, k=c.k, chunk_size=3,
                                prior_weight=0.5, prior_bound=1.0)

    zj, ij = jax.jit(f)(jax.random.key(7), start, jnp.asarray(cont_emb))
    with jax.disable_jit():
        ze, ie = f(jax.random.key(7), start, jnp.asarray(cont_emb))
    np.testing.assert_allclose(np.asarray(zj), np.asarray(ze), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ij.grad_norm), np.asarray(ie.grad_norm), rtol=1e-4)


def test_chunking_changes_nothing():
    c = cfg()
    models, _, cont_emb, start = start_points(2, c)
    kw = dict(steps=3, learning_rate=0.05, k=c.k)
    a, _ = _improve(jax.random.key(0), models, start, jnp.asarray(cont_emb), chunk_size=8, **kw)
    b, _ = _improve(jax.random.key(0), models, start, jnp.asarray(cont_emb), chunk_size=3, **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_prior_penalty_pulls_latents_back_into_range():
    c = cfg()
    models, _, cont_emb, _ = start_points(0, c)
    far = jnp.full((4, c.latent_channels, c.latent_frames), 5.0)
    kw = dict(steps=20, learning_rate=0.1, optimizer="adam", k=c.k, prior_bound=3.0, chunk_size=4)
    z_pen, _ = _improve(jax.random.key(0), models, far, jnp.asarray(cont_emb), prior_weight=100.0, **kw)
    z_free, _ = _improve(jax.random.key(0), models, far, jnp.asarray(cont_emb), prior_weight=0.0, **kw)
    assert np.mean(np.abs(np.asarray(z_pen))) < 4.0  # pulled towards the bound
    assert np.mean(np.abs(np.asarray(z_pen))) < np.mean(np.abs(np.asarray(z_free))) - 0.5
    assert float(jnp.sum(gradient.prior_penalty(far, 3.0))) == pytest.approx(4 * 4.0)
    assert float(jnp.sum(gradient.prior_penalty(jnp.full((1, 2, 2), 2.9), 3.0))) == 0.0


# --------------------------------------------------------------------------- modes, step, config
@pytest.mark.parametrize("kw,count", [
    (dict(), 0), (dict(gradient_fraction=0.5), 4), (dict(gradient_fraction=0.1), 1),
    (dict(gradient_fraction=1 / 3), 3), (dict(gradient_fraction=1.0), 8), (dict(mutation="gradient"), 8),
    (dict(mutation="gradient", gradient_fraction=1.0), 8), (dict(mutation="replace", gradient_fraction=0.25), 2),
])
def test_number_of_gradient_children(kw, count):
    assert num_gradient_children(cfg(**kw)) == count


@pytest.mark.parametrize("kw", [dict(gradient_fraction=0.5), dict(mutation="gradient"),
                                dict(emitter="mix", emitter_mix="gradient:0.5,paper")])
def test_mixed_mode_keeps_the_papers_children_and_replaces_the_first_g(kw):
    c = cfg(noise=False, **kw)
    g = num_gradient_children(c)
    models, cont, cont_emb, _ = start_points(4, c)
    b = c.breed_size
    ctx = EmitContext(key=jax.random.key(9), latents=cont, embeddings=jnp.asarray(cont_emb),
                      child_keys=individuals.individual_keys(jax.random.key(1), 1, jnp.arange(b)), models=models,
                      chunk_size=c.chunk_size)
    children, extra = assemble(c).emitter.emit(ctx, 0, b)
    paper, _ = assemble(cfg(noise=False)).emitter.emit(ctx, 0, b)  # the paper-only run's children
    children, paper = np.asarray(children), np.asarray(paper)
    assert children.shape == paper.shape
    np.testing.assert_array_equal(children[g:], paper[g:])
    from lvns_jax.emitters import paper as paper_emitter

    start, _ = paper_emitter.crossed(ctx, 0, g, False)  # the same parents and point, no mutation
    moved = np.any(np.abs(children[:g] - np.asarray(start)) > 1e-6, axis=1)  # (g, T): frames changed per child
    assert np.all(moved.sum(axis=1) > 1)  # gradient steps move many frames, not one mutated column


def test_step_with_gradient_mutation_is_deterministic_scan_equals_step_and_logs_metrics():
    c = cfg(gradient_fraction=0.5, gradient_steps=2)
    e = assemble(c)
    s = e.init()
    a, ms = s, []
    for _ in range(2):
        a, m = e.step(a)
        ms.append(m)
    b, mb = e.run_block(s, 2)
    np.testing.assert_array_equal(np.asarray(a.latents), np.asarray(b.latents))
    for key in ("gradient_norm", "gradient_gain", "gradient_gain_vs_random", "gradient_children_sparseness",
                "gradient_random_children_sparseness", "gradient_start_sparseness", "gradient_end_sparseness"):
        vals = np.asarray(mb[key])
        assert vals.shape == (2,) and np.all(np.isfinite(vals)), key
        np.testing.assert_allclose(vals, [float(m[key]) for m in ms], rtol=1e-5)
    assert np.all(np.asarray(mb["gradient_norm"]) > 0)
    # gain vs random = difference of the two children means; children mean = their average
    np.testing.assert_allclose(mb["gradient_gain_vs_random"],
                               mb["gradient_children_sparseness"] - mb["gradient_random_children_sparseness"],
                               rtol=1e-5)
    np.testing.assert_allclose(mb["children_sparseness_mean"], 0.5 * (
        mb["gradient_children_sparseness"] + mb["gradient_random_children_sparseness"]), rtol=1e-5)
    # pure gradient mode has no random children to compare with
    e = assemble(cfg(mutation="gradient", gradient_steps=1))
    _, m = e.step(e.init())
    assert "gradient_norm" in m and "gradient_gain_vs_random" not in m
    # paper mode: no gradient metrics, and the step is the paper's
    e = assemble(cfg())
    _, m = e.step(e.init())
    assert not any(k.startswith("gradient_") for k in m)


@pytest.mark.parametrize("kw,key", [
    (dict(gradient_fraction=-0.1), "gradient_fraction"),
    (dict(gradient_fraction=1.5), "gradient_fraction"),
    (dict(gradient_fraction=0.05), "gradient_fraction"),  # rounds to 0 children of 8
    (dict(mutation="gradient", gradient_fraction=0.5), "gradient_fraction"),
    (dict(gradient_steps=0), "gradient_steps"),
    (dict(gradient_lr=0.0), "gradient_lr"),
    (dict(gradient_optimizer="rmsprop"), "gradient_optimizer"),
    (dict(gradient_prior_weight=-1.0), "gradient_prior_weight"),
    (dict(gradient_prior_bound=0.0), "gradient_prior_bound"),
    (dict(mutation="gradients"), "mutation"),
    (dict(emitter="mix", emitter_mix="gradient:0.5"), "emitter_mix"),
    (dict(emitter="mix", emitter_mix="gradient:x,paper"), "emitter_mix"),
    (dict(emitter="mix", emitter_mix="gradient,paper"), "emitter_mix"),
    (dict(emitter="mix", emitter_mix="mutant:0.5,paper"), "emitter_mix"),
    (dict(emitter="evolve"), "emitter"),
    (dict(emitter_mix="gradient:0.5,paper"), "emitter_mix"),  # without emitter = mix it would be ignored
])
def test_config_validation(kw, key):
    from lvns_jax.assemble import check

    with pytest.raises(ConfigError, match=f"^{key}:"):
        check(cfg(**kw))


def test_config_overrides_from_the_command_line():
    c = config.load(None, ["mutation=gradient", "gradient_optimizer=sgd", "gradient_lr=0.1", "gradient_steps=3"],
                    base=config.Config(**{**config.Config().__dict__, **BASE}))
    assert (c.mutation, c.gradient_optimizer, c.gradient_lr, c.gradient_steps) == ("gradient", "sgd", 0.1, 3)
    assert 'mutation = "gradient"' in c.to_toml()
