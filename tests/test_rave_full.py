"""Full-size parity (slow): real-size random-init acids-rave exports, not committed (70-130 MB).

Make them with the reference venv, then run ``pytest -m slow tests/test_rave_full.py``::

    /work/refvenv/bin/python tests/fixtures/rave/make_fixtures.py --full v1 v2 v2_small --out weights/rave_full

``LVNS_RAVE_FULL`` overrides the directory. Missing exports skip these tests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp

from lvns_jax.models import rave
from rave_testutil import load_ts, ref_decode, ref_decode_noise_off, rel_err, replay_draws

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_DIR = os.environ.get("LVNS_RAVE_FULL", os.path.join(ROOT, "weights", "rave_full"))
TOL = 1e-4


def _pair(name):
    path = os.path.join(FULL_DIR, f"{name}.ts")
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing (see this module's docstring)")
    return load_ts(path), rave.load(path)


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_full_size_noise_off(name):
    ts, dec = _pair(name)
    assert (dec.sample_rate, dec.hop, dec.latent_size, dec.full_latent_size) == (44100, 2048, 8, 128)
    z = np.random.default_rng(0).standard_normal((2, dec.latent_size, 8)).astype(np.float32)
    ref = ref_decode_noise_off(ts, z)
    ours = np.asarray(dec.decode(z, noise=False))
    assert np.abs(ref).max() > 1e-3
    err = rel_err(ours, ref)
    print(f"full {name}: noise-off max abs err / peak = {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", ["v1", "v2_small"])
def test_full_size_replayed_noise(name):
    ts, dec = _pair(name)
    B, T = 2, 8
    z = np.random.default_rng(1).standard_normal((B, dec.latent_size, T)).astype(np.float32)
    ref = ref_decode(ts, z, seed=3)
    comp, u = replay_draws(dec, 3, B, dec.latent_size, T)
    ours = np.asarray(jax.jit(lambda p, z, c, u: dec.apply(p, z, c, u, True))(dec.params, jnp.asarray(z), comp, u))
    err = rel_err(ours, ref)
    print(f"full {name}: replayed-noise max abs err / peak = {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", ["v1", "v2", "v2_small"])
def test_untrained_matches_the_export_structure(name):
    """untrained(name) has exactly the spec and parameter shapes of acids-rave's real-size export."""
    _, dec = _pair(name)
    u = rave.untrained(name)
    assert u.spec == dec.spec
    assert {k: tuple(v.shape) for k, v in u.params.items()} == {k: tuple(v.shape) for k, v in dec.params.items()}
    np.testing.assert_allclose(np.asarray(u.params["pqmf_w"]), np.asarray(dec.params["pqmf_w"]), atol=1e-6)


def test_full_size_tag_v1_cached_stereo_cropped():
    """The paper's kind of model: a tag-v1 streaming (--cached) stereo export, capacity 64, internal
    latent 128, cropped latent 8 (like LVNS-RAVE's VCTK model). Made with the recipe in
    tests/fixtures/rave_exports/README.md as ``vctk_like.ts`` + ``vctk_like_twin.ts`` in LVNS_RAVE_FULL."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "rave_exports", "recipe"))
    from ref_decode import compare, reference

    path = os.path.join(FULL_DIR, "vctk_like.ts")
    twin = os.path.join(FULL_DIR, "vctk_like_twin.ts")
    if not (os.path.isfile(path) and os.path.isfile(twin)):
        pytest.skip(f"{path} / {twin} missing (see tests/fixtures/rave_exports/README.md)")
    dec = rave.load(path)
    assert dec.meta["streaming"] and dec.meta["export_channels"] == 2 and dec.meta["trained_cropped"]
    assert (dec.latent_size, dec.full_latent_size, dec.sample_rate, dec.hop) == (8, 128, 48000, 2048)
    z = np.random.default_rng(0).standard_normal((2, 8, 8)).astype(np.float32)
    ref, info = reference(path, z, twin=twin)
    assert compare(np.asarray(dec.decode(z, noise=False)), ref) <= TOL
    n = sum(int(np.prod(v.shape)) for k, v in dec.params.items() if k not in ("latent_pca", "latent_mean", "pqmf_w"))
    assert n > 12_000_000   # the paper's v1 decoder size
