"""`lvns convert rave`, `lvns_jax.rave.load` / `untrained` and the interface the engine uses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from lvns_jax.models import rave
from lvns_jax.errors import WeightsError
from lvns_jax.weights_io import sha256_of
from rave_testutil import FIXTURES, ts_path

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from lvns_jax.cli import main

    out = str(tmp_path_factory.mktemp("rave") / "v2_small")
    assert main(["convert", "rave", ts_path("v2_small"), "--out", out]) == 0
    return out


def test_convert_writes_params_and_metadata(converted):
    assert os.path.isdir(os.path.join(converted, "params"))
    with open(os.path.join(converted, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(FIXTURES, "fixtures.json")) as f:
        info = json.load(f)["v2_small"]
    assert meta["kind"] == "rave"
    assert meta["architecture"] == "v2+noise"
    assert meta["sample_rate"] == info["sample_rate"] == 44100
    assert meta["latent_size"] == info["latent_size"] == 4
    assert meta["full_latent_size"] == info["full_latent_size"] == 16
    assert meta["hop"] == 512  # ratios 4*2*2*2 x 16 PQMF bands
    assert meta["source"] == "v2_small.ts"
    assert meta["sha256"] == sha256_of(ts_path("v2_small"))


def test_load_dir_decodes_like_the_ts(converted):
    from_dir = rave.load(converted)
    from_ts = rave.load(ts_path("v2_small"))
    assert from_dir.trained and "UNTRAINED" not in from_dir.description
    assert (from_dir.sample_rate, from_dir.hop, from_dir.latent_size) == (44100, 512, 4)
    # same static spec and bit-identical params ...
    assert from_dir.spec == from_ts.spec
    assert jax.tree_util.tree_structure(from_dir.params) == jax.tree_util.tree_structure(from_ts.params)
    for k in from_ts.params:
        np.testing.assert_array_equal(np.asarray(from_dir.params[k]), np.asarray(from_ts.params[k]))
    # ... so the same audio, noise included (one pure function, the two param trees)
    z = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    key = jax.random.key(1)
    f = jax.jit(from_dir.pure_decode(noise=True))
    a = np.asarray(f(from_dir.params, z, key))
    b = np.asarray(f(from_ts.params, z, key))
    assert a.shape == (3, 5 * 512) and np.abs(a).max() > 1e-3
    np.testing.assert_array_equal(a, b)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "garbage.ts"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match="not a readable TorchScript"):
        rave.load(str(bad))
    truncated = tmp_path / "truncated.ts"
    with open(ts_path("v2_small"), "rb") as f:
        truncated.write_bytes(f.read()[:100_000])
    with pytest.raises(WeightsError, match="not a readable TorchScript"):
        from lvns_jax.models.rave.convert import convert

        convert(str(truncated), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line(tmp_path, capsys):
    from lvns_jax.cli import main

    bad = tmp_path / "garbage.ts"
    bad.write_bytes(b"not a zip")
    assert main(["convert", "rave", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvns: error:") and "garbage.ts" in err and "\n" not in err


def test_not_a_rave_export(tmp_path):
    path = str(tmp_path / "linear.ts")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(WeightsError, match="unsupported RAVE export Linear"):
        rave.load(path)


class GRU(torch.nn.Module):  # named like acids-rave's recurrent layer option of GeneratorV2
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(4, 4, batch_first=True)

    def forward(self, x):
        return self.gru(x.transpose(1, 2))[0].transpose(1, 2)


class GeneratorV2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(GRU(), torch.nn.Conv1d(4, 16, 3, padding=1))

    def forward(self, x):
        return self.net(x)


class VariationalScriptedRAVE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = GeneratorV2()
        self.latent_size = 4

    def forward(self, x):
        return self.decoder(x)


def test_unsupported_architecture_names_the_module(tmp_path):
    path = str(tmp_path / "gru.ts")
    torch.jit.save(torch.jit.script(VariationalScriptedRAVE()), path)
    with pytest.raises(WeightsError, match=r"unsupported RAVE module GRU at decoder\.net\.0"):
        rave.load(path)


def test_missing_paths(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        rave.load(str(tmp_path / "nope"))
    with pytest.raises(WeightsError, match="not found"):
        from lvns_jax.models.rave.convert import convert

        convert(str(tmp_path / "nope.ts"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="lvns convert"):
        rave.load(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------- engine interface

@pytest.mark.parametrize("name,hop", [("v1", 2048), ("v2", 2048), ("v2_small", 512)])
def test_untrained_interface(name, hop):
    """What lvns_jax.models.build uses: params, pure_decode(noise), sample_rate, hop,
    latent_size, description, trained; real size (v1: 12.8 M decoder parameters as in the paper)."""
    m = rave.untrained(name, seed=0)
    assert (m.sample_rate, m.hop, m.latent_size, m.full_latent_size) == (44100, hop, 8, 128)
    assert m.trained is False and "UNTRAINED" in m.description and isinstance(m.description, str)
    leaves = jax.tree_util.tree_leaves(m.params)
    assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in leaves)
    n = sum(int(np.prod(v.shape)) for k, v in m.params.items() if k not in ("latent_pca", "latent_mean", "pqmf_w"))
    expected = {"v1": 12_769_472, "v2": 15_467_520, "v2_small": 3_810_816}[name]  # = the acids-rave exports
    assert n == expected
    # seeded: same seed same params, other seed other params
    again = rave.untrained(name, seed=0)
    other = rave.untrained(name, seed=1)
    assert all(np.array_equal(again.params[k], m.params[k]) for k in m.params)
    assert not np.array_equal(other.params["L0_w"], m.params["L0_w"])
    assert callable(m.pure_decode(noise=True)) and callable(m.pure_decode(noise=False))


def test_untrained_pure_decode_in_jit():
    m = rave.untrained("v2_small", seed=0)
    f = jax.jit(m.pure_decode(noise=True))
    g = jax.jit(m.pure_decode(noise=False))
    z = jax.random.normal(jax.random.key(0), (3, m.latent_size, 2), jnp.float32)
    a = f(m.params, z, jax.random.key(1))
    assert a.shape == (3, 2 * m.hop) and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a))) and float(jnp.abs(a).max()) > 0
    assert float(jnp.abs(a - f(m.params, z, jax.random.key(2))).max()) > 0  # the key drives the noise
    np.testing.assert_array_equal(np.asarray(a), np.asarray(f(m.params, z, jax.random.key(1))))
    b = g(m.params, z, None)
    assert b.shape == a.shape and float(jnp.abs(b - a).max()) > 0
    # params are an argument, not baked in: other params, other audio
    other = rave.untrained("v2_small", seed=1)
    assert float(jnp.abs(g(other.params, z, None) - b).max()) > 0


def test_unknown_untrained_config():
    with pytest.raises(ValueError, match="unknown RAVE config"):
        rave.untrained("v9")
