"""The plug-in registry: the worked example of lvns_jax/EXTENDING.md (a new selector is one module
plus one registration) runs as written; names, errors; the step reads no config."""

import importlib.util
import os
import re
import sys

import numpy as np
import pytest

from lvns_jax import config, plugins
from lvns_jax.assemble import assemble, check
from lvns_jax.errors import ConfigError

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lvns_jax", "EXTENDING.md")
BASE = dict(rave="toy", embedder="toy", container_size=12, breed_size=6, k=4, latent_channels=3,
            latent_frames=8, chunk_size=4, progress=False)


def test_the_documented_tournament_selector_plugs_in(tmp_path, request):
    text = open(DOC).read()
    code = re.search(r"`lvns_jax/tournament.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "tournament_example.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("tournament_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tournament_example"] = module
    spec.loader.exec_module(module)  # registers "tournament"
    request.addfinalizer(lambda: plugins._REGISTRY["selector"].pop("tournament", None))  # keep other tests' registry
    assert "tournament" in plugins.names("selector")
    e = assemble(config.from_dict({**BASE, "selection": "tournament"}))
    s, m = e.run_block(e.init(), 3)
    assert s.latents.shape == (12, 3, 8) and np.all(np.isfinite(np.asarray(s.sparseness)))
    assert isinstance(e.selector, module.Tournament)


def test_every_builtin_is_registered_and_unknown_names_fail_in_one_line():
    assert set(plugins.names("emitter")) >= {"paper", "gradient", "mix"}
    assert set(plugins.names("scorer")) == {"brute", "incremental"}
    assert set(plugins.names("archive")) == {"none", "threshold", "random"}
    assert set(plugins.names("embedder")) >= {"toy", "vggish", "panns"}
    assert set(plugins.names("generator")) == {"toy", "rave"}
    with pytest.raises(ConfigError, match=r"^knn: 'faiss' is not one of brute, incremental$"):
        check(config.from_dict({**BASE, "knn": "faiss"}))
    with pytest.raises(ValueError, match="kind"):
        plugins.register("mutator", "x")


def test_the_step_reads_no_config():
    """The step sees plug-ins only: the same Search runs whatever config object is alive."""
    import jax

    from lvns_jax import search

    e = assemble(config.from_dict(BASE))
    s = e.init()
    lowered = search.step.lower(e, s)  # traces with only (search, state)
    assert "Config" not in str(jax.tree_util.tree_structure((e, s)))
    assert lowered is not None


def test_panns_embedder_runs_in_the_search_and_is_labelled_untrained(caplog):
    """embedder = untrained:panns: CNN14 (2048-d) behind the toy generator, through the whole step."""
    import logging

    from lvns_jax.models import panns

    frames = -(-panns.min_samples(16000) // 64)  # toy generator: 16 kHz, hop 64
    c = config.from_dict({**BASE, "embedder": "untrained:panns", "latent_frames": frames, "container_size": 6,
                          "breed_size": 3, "k": 2})
    with caplog.at_level(logging.WARNING, logger="lvns_jax"):
        e = assemble(c)
    assert "UNTRAINED PANNs CNN14" in caplog.text and not e.models.trained
    s, m = e.run_block(e.init(), 2)
    assert s.embeddings.shape == (6, 2048) and np.all(np.isfinite(np.asarray(s.sparseness)))
    with pytest.raises(ConfigError, match="^latent_frames: .* CNN14 needs"):
        assemble(c.replace(latent_frames=4))


def test_vggish_front_end_runs_in_float32_where_there_is_no_float64_fft():
    """XLA:TPU has no float64 FFT: with frontend_precision = auto the VGGish embedder built for "tpu"
    has no float64 op (so the default run compiles for TPU); on CPU the exact float64 island stays."""
    import jax
    import jax.numpy as jnp

    from lvns_jax import embedders

    c = config.from_dict({**BASE, "embedder": "untrained:vggish", "latent_frames": 16})
    audio = jnp.zeros((2, 16000))
    texts = {}
    for platform in ("cpu", "tpu"):
        e = embedders.build_vggish(c, "untrained", 16000, 16000, platform=platform)
        texts[platform] = jax.jit(e.embed).lower(e.params, audio).as_text()
    assert "f64" in texts["cpu"] and "f64" not in texts["tpu"]
    assert not embedders.frontend_float64(c.replace(frontend_precision="float32"), "cpu")
    with pytest.raises(ConfigError, match="^frontend_precision: float64 needs a float64 FFT"):
        embedders.frontend_float64(c.replace(frontend_precision="float64"), "tpu")
