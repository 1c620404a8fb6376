"""Configuration: defaults, TOML, overrides, .gin of the original, one-line errors."""

import os
import subprocess
import sys
import textwrap

import pytest

from lvns_jax import config
from lvns_jax.errors import ConfigError

TOY = ["rave=toy", "vggish=toy"]


def test_defaults_are_valid_and_frozen():
    c = config.load(None, TOY)
    assert c.container_size == 50 and c.breed_size == 30 and c.k == 30
    with pytest.raises(Exception):
        c.k = 3  # frozen


def test_overrides_are_typed():
    c = config.load(None, TOY + ["k=7", "mutation_scale=0.5", "noise=false", "mutation=replace"])
    assert c.k == 7 and c.mutation_scale == 0.5 and c.noise is False and c.mutation == "replace"


def test_toml_file_and_roundtrip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('rave = "toy"\nvggish = "toy"\ncontainer_size = 20\nbreed_size = 10\nk = 5\n')
    c = config.load(str(p), ["k=6"])
    assert (c.container_size, c.breed_size, c.k) == (20, 10, 6)
    q = tmp_path / "resolved.toml"
    q.write_text(c.to_toml())
    assert config.load(str(q)) == c


@pytest.mark.parametrize("items,match", [
    (["kk=3"], "unknown config key 'kk'"),
    (["k=abc"], "k: expected int"),
    (["k=80"], "k: must be < pool size"),
    (["breed_size=60"], "breed_size: must be <= container_size"),
    (["latent_frames=3"], "latent_frames: must be >= 4"),
    (["mutation=swap"], "mutation: 'swap' is not one of add, replace"),
    (["sparseness_rule=median"], "sparseness_rule"),
    (["noise=maybe"], "noise: expected bool"),
    (["init=dataset"], "dataset_path"),
    (["rave=weights/nope"], "rave: weights directory"),
    (["vggish=/no/such/dir"], "embedder: weights directory"),  # the legacy key, read as embedder
    (["embedder=/no/such/dir"], "embedder: weights directory"),
    (["embedder=untrained:clap"], "embedder: 'clap' is not one of"),
    (["archive=grid"], "archive: 'grid' is not one of none, threshold, random"),
    (["archive_rate=2"], "archive_rate: must be in"),
    (["selection=replace"], "breed_size == container_size"),
    (["k"], "key=value"),
])
def test_errors_name_the_key(items, match):
    """Key errors come from the config; plug-in names and their keys from assembling it (no models)."""
    from lvns_jax.assemble import check

    with pytest.raises(ConfigError, match=match):
        check(config.load(None, TOY + items))


def test_toml_wrong_type_and_bad_syntax(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('k = "many"\n')
    with pytest.raises(ConfigError, match="k: expected int"):
        config.load(str(p))
    p.write_text("k = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(p))
    p.write_text("[container]\nsize = 3\n")
    with pytest.raises(ConfigError, match="top level"):
        config.load(str(p))


def test_ts_file_gets_convert_hint(tmp_path):
    ts = tmp_path / "VCTK.ts"
    ts.write_bytes(b"x")
    with pytest.raises(ConfigError, match="lvns convert rave"):
        config.load(None, [f"rave={ts}", "vggish=toy"])


# The shape of the original LVNS-RAVE configs (eprior/eprior/configs/*.gin).
ORIGINAL_GIN = textwrap.dedent('''\
    # basic configs
    EPrior:
        device = "cpu"
        sample_rate = 44100
        output_path = "/somewhere/generated/VCTK"
        random_seed = 42

        # evolution configs
        num_iteration = 500
        save_output_per_n_iteration = 10

    EPrior.rave:
        path = "RAVE_PATH"
        latent_dim = (8, 64)
        version = "V1"

    EPrior.classifier:
        type = "vggish"

    EPrior.container:
        init_method =  "random"    # ["random", "normal", "dataset"]
        size = 500

    EPrior.mutation:
        new_breed_size = 100
        method = "add"
        distribution = "normal"

    EPrior.selection:
        method = "novelty"    # ["concat", "replace", "novelty"]
        knn_n_neighbors = 50
    ''')


def test_original_gin_is_read(tmp_path):
    p = tmp_path / "VCTK.gin"
    p.write_text(ORIGINAL_GIN.replace("RAVE_PATH", "toy"))
    c = config.load(str(p), ["vggish=toy"])
    assert (c.seed, c.generations, c.save_every) == (42, 500, 10)
    assert (c.latent_channels, c.latent_frames) == (8, 64)
    assert (c.init, c.container_size, c.breed_size, c.k) == ("uniform", 500, 100, 50)
    assert (c.mutation, c.mutation_distribution) == ("add", "normal")
    # the original's semantics
    assert c.sparseness_rule == "farthest" and c.reevaluate_container is True


def test_gin_dotted_form_and_unsupported_binding(tmp_path):
    p = tmp_path / "x.gin"
    p.write_text('EPrior.container.size = 40\nEPrior.rave.path = "toy"\nEPrior.mutation.new_breed_size = 20\n'
                 'EPrior.selection.knn_n_neighbors = 5\n')
    c = config.load(str(p), ["vggish=toy"])
    assert (c.container_size, c.breed_size, c.k) == (40, 20, 5)
    p.write_text('EPrior.rave.path = "toy"\nEPrior.mutation.temperature = 3\nEPrior.foo = 1\n')
    with pytest.raises(ConfigError, match="unsupported gin bindings: EPrior.mutation.temperature, EPrior.foo"):
        config.load(str(p))
    p.write_text('EPrior.selection.method = "concat"\n')
    with pytest.raises(ConfigError, match="concat"):
        config.load(str(p))


def test_cli_config_error_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "lvns_jax.cli", "run", "rave=toy", "vggish=toy", "k=abc",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["lvns: error: k: expected int, got 'abc'"]
    assert not (tmp_path / "r").exists()
