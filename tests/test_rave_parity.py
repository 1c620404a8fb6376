"""Parity of the Flax RAVE decoders with acids-rave TorchScript exports (committed fixtures).

The fixtures are small random-init models built from acids-rave's packaged gin configs and
exported with its own export code (tests/fixtures/rave/make_fixtures.py). TorchScript loads
without acids-rave, so these run in CI with torch alone. Full-size parity: test_rave_full.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp

from lvns_jax.models.rave import load
from lvns_jax.models.rave.blocks import leaves
from rave_testutil import (NO_NOISE_TWIN, NOISY, band_energies_db, boost_noise, decoder_from_module,
                           load_ts, ref_decode, ref_decode_noise_off, rel_err, replay_draws, ts_path)

TOL = 1e-4  # max abs error relative to the reference's peak amplitude
BOOST = 2000.0  # noise-branch gain for v2_small energy/replay tests (see boost_noise)

_cache = {}


def model_pair(name):
    if name not in _cache:
        _cache[name] = (load_ts(name), load(ts_path(name)))
    return _cache[name]


def boosted_pair(name):
    key = name + "+boost"
    if key not in _cache:
        ts = boost_noise(load_ts(name), BOOST)
        _cache[key] = (ts, decoder_from_module(ts, key))
    return _cache[key]


def latents(dec, B=2, T=8, seed=0, full=False):
    C = dec.full_latent_size if full else dec.latent_size
    return np.random.default_rng(seed).standard_normal((B, C, T)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jit_apply(dec):
    return jax.jit(lambda p, z, c, u: dec.apply(p, z, c, u, True))


def replayed(dec, z, seed):
    """Our decode fed with the random numbers the export draws after torch.manual_seed(seed)."""
    B, C, T = z.shape
    comp, u = replay_draws(dec, seed, B, C, T)
    return np.asarray(_jit_apply(dec)(dec.params, jnp.asarray(z), comp, u)), u


def _noise_off_parity(name):
    _, dec = model_pair(name)
    twin = NO_NOISE_TWIN.get(name)
    ts = load_ts(twin) if twin else model_pair(name)[0]
    if twin:
        # the twin export holds the same weights, minus the noise generator
        tdec = load(ts_path(twin))
        gen, tgen = dec.spec[1], tdec.spec[1]
        ours = [n for n in [*leaves(gen[1]), *leaves(gen[2])] if n[0] in ("conv", "convt")]
        theirs = [n for n in leaves(tgen[1]) if n[0] in ("conv", "convt")]
        assert len(ours) == len(theirs) and tgen[3] is None
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(dec.params[f"{a[1]}_w"], tdec.params[f"{b[1]}_w"])
    z = latents(dec)
    ref = ref_decode_noise_off(ts, z)
    ours = np.asarray(dec.decode(z, noise=False))
    assert ours.shape == ref.shape == (2, 8 * dec.hop)
    assert np.abs(ref).max() > 1e-3  # the comparison is not against silence
    err = rel_err(ours, ref)
    print(f"{name}: noise-off max abs err / peak = {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", ["v1", "v2", "v2_small"])
def test_noise_off_parity(name):
    """Noise off on both sides: latent completed with zeros, no noise branch. v1: the export's
    ``warmed_up`` switched off; v2_small: the same weights exported without the noise module."""
    _noise_off_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v3", "v1_causal", "v2_causal_noise"])
def test_noise_off_parity_more_configs(name):
    _noise_off_parity(name)


def _replayed_noise_parity(name, boosted=False):
    ts, dec = boosted_pair(name) if boosted else model_pair(name)
    B, T = 2, 8
    z = latents(dec, B, T, seed=1)
    ref = ref_decode(ts, z, seed=1234)
    ours, u = replayed(dec, z, 1234)
    assert (u is not None) == NOISY[name]
    err = rel_err(ours, ref)
    print(f"{name}: replayed-noise max abs err / peak = {err:.2e}")
    assert err <= TOL
    # and the draws matter: without them the output differs
    off = np.asarray(dec.decode(z, noise=False))
    assert rel_err(off, ref) > 10 * TOL
    # noise=False leaves no randomness: the key is ignored
    np.testing.assert_array_equal(np.asarray(dec.decode(z, jax.random.key(0), noise=False)), off)
    if u is not None:  # the noise branch alone matters too (completion replayed, uniform zero)
        comp, _ = replay_draws(dec, 1234, B, z.shape[1], T)
        no_branch = np.asarray(_jit_apply(dec)(dec.params, jnp.asarray(z), comp, np.zeros_like(u)))
        assert rel_err(no_branch, ref) > 10 * TOL


@pytest.mark.parametrize("name,boosted", [("v1", False), ("v2_small", True)])
def test_replayed_noise_parity(name, boosted):
    """Noise on, with the export's own random draws replayed: the latent completion (N(0, 1))
    and the noise branch (uniform) reproduce the export exactly."""
    _replayed_noise_parity(name, boosted)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v2", "v3", "v2_causal_noise", "v1_causal"])
def test_replayed_noise_parity_more_configs(name):
    _replayed_noise_parity(name, boosted=name == "v2_causal_noise")


@pytest.mark.parametrize("name,boosted,full", [("v1", False, True), ("v2_small", True, False)])
def test_noise_band_energy(name, boosted, full):
    """Noise on: per-band energy of the noise matches the export's within 1 dB, averaged over
    16 (v1) or 96 (v2_small) pairs of independent draws. v1 with a full-size latent: only the
    noise branch is random; v2_small with the user latent: the latent completion (N(0, 1)) and
    the noise branch together, as the engine decodes. The noise is the difference of two decodes
    of the same latent with independent draws (the deterministic part, including torch-vs-XLA
    rounding, cancels exactly on each side)."""
    ts, dec = boosted_pair(name) if boosted else model_pair(name)
    B, T = (8, 8) if name == "v1" else (16, 8)
    pairs = 2 if name == "v1" else 6  # v2_small's noise is louder in few frames: more draws
    z = latents(dec, B, T, seed=2, full=full)
    ref_n = np.concatenate([ref_decode(ts, z, seed=100 + 2 * i) - ref_decode(ts, z, seed=101 + 2 * i)
                            for i in range(pairs)])
    keys = jax.random.split(jax.random.key(7), 2 * pairs)
    our_n = np.concatenate([np.asarray(dec.decode(z, keys[2 * i])) - np.asarray(dec.decode(z, keys[2 * i + 1]))
                            for i in range(pairs)])
    e_ref = band_energies_db(ref_n)
    e_our = band_energies_db(our_n)
    ours, _ = replayed(dec, z, 5)
    e_det = band_energies_db(ref_decode(ts, z, seed=5) - ours)
    assert e_ref.min() > e_det.max() + 20  # the compared energy is noise, not numerical error
    d = e_ref - e_our
    print(f"{name}: per-band noise energy diff (dB) max {np.abs(d).max():.2f}, mean {d.mean():+.2f}")
    assert np.max(np.abs(d)) < 1.0, d


@pytest.mark.slow
def test_latent_completion_band_energy():
    """The latent completion alone (v2: no noise branch) has the export's per-band energy."""
    ts, dec = model_pair("v2")
    B, T = 16, 8
    z = latents(dec, B, T, seed=3)
    assert dec.latent_size < dec.full_latent_size
    ref_n = np.concatenate([ref_decode(ts, z, seed=200 + 2 * i) - ref_decode(ts, z, seed=201 + 2 * i)
                            for i in range(2)])
    keys = jax.random.split(jax.random.key(8), 4)
    our_n = np.concatenate([np.asarray(dec.decode(z, keys[2 * i])) - np.asarray(dec.decode(z, keys[2 * i + 1]))
                            for i in range(2)])
    d = band_energies_db(ref_n) - band_energies_db(our_n)
    assert np.max(np.abs(d)) < 1.0, d


def test_latent_post_processing():
    """The export's PCA rotation and mean are read from the .ts and applied to the completed
    latent: decoding [z, c] equals decoding the full internal latent pca^T [z, c] + mean with an
    identity PCA and zero mean."""
    ts, dec = model_pair("v2")
    pca = ts.latent_pca.numpy()
    mean = ts.latent_mean.numpy()
    np.testing.assert_array_equal(np.asarray(dec.params["latent_pca"]), pca)
    np.testing.assert_array_equal(np.asarray(dec.params["latent_mean"]), mean)
    assert not np.allclose(pca, np.eye(len(pca))) and np.abs(mean).max() > 0  # a real rotation
    z = latents(dec, 2, 4, seed=11)
    c = np.random.default_rng(12).standard_normal((2, dec.full_latent_size - dec.latent_size, 4)).astype(np.float32)
    zc = np.concatenate([z, c], 1)
    full = np.einsum("bjt,ji->bit", zc, pca) + mean[None, :, None]
    plain = dict(dec.params, latent_pca=jnp.eye(len(pca)), latent_mean=jnp.zeros(len(pca)))
    a = np.asarray(_jit_apply(dec)(dec.params, jnp.asarray(z), jnp.asarray(c), None))
    b = np.asarray(_jit_apply(dec)(plain, jnp.asarray(full.astype(np.float32)), None, None))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_batch_equals_one_by_one_any_batch_size():
    ts, dec = model_pair("v2_small")
    T = 6
    for B in (1, 3, 65):  # the original splits into batches of 64; ours must not need to
        z = latents(dec, B, T, seed=B)
        y = np.asarray(dec.decode(z, noise=False))
        assert y.shape == (B, T * dec.hop) and y.dtype == np.float32
        for i in sorted({0, B // 2, B - 1}):
            yi = np.asarray(dec.decode(z[i:i + 1], noise=False))
            np.testing.assert_allclose(y[i:i + 1], yi, rtol=0, atol=1e-6 * np.abs(yi).max() + 1e-9)
    # noise on, against the export, at an odd batch size above 64
    z = latents(dec, 65, T, seed=7)
    ref = ref_decode(ts, z, seed=9)
    ours, _ = replayed(dec, z, 9)
    assert ours.shape == (65, T * dec.hop)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.slow  # eager mode compiles every primitive: slow on a loaded CPU
def test_jit_equals_eager():
    ts, dec = model_pair("v2_small")
    z = jnp.asarray(latents(dec, 3, 6, seed=5))  # shapes shared with the batch test (compile cache)
    key = jax.random.key(3)
    with jax.disable_jit():
        eager = np.asarray(dec.decode_fn(True)(z, key))
        eager_off = np.asarray(dec.decode_fn(False)(z, None))
    jitted = np.asarray(dec.decode(z, key))
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5 * np.abs(eager).max())
    np.testing.assert_allclose(np.asarray(dec.decode(z, noise=False)), eager_off, rtol=0,
                               atol=1e-5 * np.abs(eager_off).max())


def test_keys_and_pure_fn_in_lax_map():
    ts, dec = boosted_pair("v2_small")
    z = jnp.asarray(latents(dec, 16, 8, seed=5))  # shape shared with the energy test (compile cache)
    key = jax.random.key(3)
    jitted = np.asarray(dec.decode(z, key))
    # noise on: the key matters, and the same key gives the same audio
    other = np.asarray(dec.decode(z, jax.random.key(4)))
    assert np.abs(other - jitted).max() > 1e-6
    np.testing.assert_array_equal(np.asarray(dec.decode(z, key)), jitted)
    # the pure function with params as an argument, inside jit + lax.map (as the engine uses it)
    f = dec.pure_decode(noise=False)
    chunks = z.reshape(4, 4, *z.shape[1:])
    mapped = jax.jit(lambda p, c: jax.lax.map(lambda zc: f(p, zc, None), c))(dec.params, chunks)
    np.testing.assert_allclose(np.asarray(mapped).reshape(16, -1), np.asarray(dec.decode(z, noise=False)),
                               rtol=0, atol=1e-6)


def test_v1_layout_and_shape():
    """Our output is always (B, S), whatever the export's layout ((B, 1, S) for acids-rave 2.x)."""
    ts, dec = model_pair("v1")
    z = latents(dec, 2, 3)
    with torch.no_grad():
        raw = ts.decode(torch.from_numpy(np.concatenate(
            [z, np.zeros((2, dec.full_latent_size - dec.latent_size, 3), np.float32)], 1)))
    assert tuple(raw.shape) == (2, 1, 3 * dec.hop)
    assert dec.decode(z, noise=False).shape == (2, 3 * dec.hop)
    assert dec.decode(z[0], noise=False).shape == (1, 3 * dec.hop)
    with pytest.raises(ValueError, match="at most"):
        dec.decode(np.zeros((1, dec.full_latent_size + 1, 3), np.float32), noise=False)
    with pytest.raises(ValueError, match="key"):
        dec.decode(z)
