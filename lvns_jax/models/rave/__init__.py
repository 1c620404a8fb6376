"""RAVE decoders in Flax (v1 and the v2 family), the .ts converter and loaders.

    from lvns_jax.models import rave
    dec = rave.load("weights/vintage")        # converted with `lvns convert rave vintage.ts --out ...`
    dec = rave.untrained("v1", seed=0)        # real-size, random init (logs a warning)
    audio = dec.decode(z, key)                # z (B, latent_size, T) -> (B, T * hop) float32
    f = dec.pure_decode(noise=True)           # pure f(params, z, key), usable inside jit / lax.map
    dec.params, dec.sample_rate, dec.hop, dec.latent_size, dec.description, dec.trained

``noise=False`` turns both random sources of an export's decode off: the latent completion
(zeros instead of N(0, 1)) and the generator's noise branch.
"""

from __future__ import annotations

import logging
import os

from lvns_jax.errors import WeightsError
from lvns_jax.models.rave.decoder import RaveDecoder, RaveModule, build_untrained, to_tuple

log = logging.getLogger(__name__)

# Packaged acids-rave configs we can build untrained (hyperparameters of the gin files).
CONFIGS = {
    "v1": dict(generator="v1", sample_rate=44100, n_band=16, latent=128,
               kw=dict(latent_size=128, capacity=64, data_size=16, ratios=(4, 4, 4, 2))),
    "v2": dict(generator="v2", sample_rate=44100, n_band=16, latent=128,
               kw=dict(latent_size=128, capacity=96, data_size=16, ratios=(4, 4, 4, 2))),
    "v2_small": dict(generator="v2", sample_rate=44100, n_band=16, latent=128,
                     kw=dict(latent_size=128, capacity=48, data_size=16, ratios=(4, 2, 2, 2),
                             noise=dict(hidden_size=64, ratios=(2, 2, 2), noise_bands=32))),
    "v3": dict(generator="v2", sample_rate=44100, n_band=16, latent=128,
               kw=dict(latent_size=128, capacity=96, data_size=16, ratios=(4, 4, 4, 2), activation="snake")),
}


def config_spec(config: str, **overrides):
    """Static spec of a packaged config (overrides: capacity, latent_size, padding_mode, ...)."""
    from lvns_jax.models.rave import v1, v2

    if config not in CONFIGS:
        raise ValueError(f"unknown RAVE config {config!r}; known: {', '.join(CONFIGS)}")
    c = CONFIGS[config]
    kw = dict(c["kw"])
    kw.update(overrides)
    gen = v1.generator_spec(**kw) if c["generator"] == "v1" else v2.generator_spec(**kw)
    n_band = c["n_band"]
    taps = 512 // n_band + 1
    mode = kw.get("padding_mode", "centered")
    pad = v1.get_padding(taps, mode=mode)
    return ("rave", gen, (n_band, taps, pad[0], pad[1]), kw["latent_size"])


def untrained(config: str = "v1", seed: int = 0, latent_size: int = 8, **overrides) -> RaveDecoder:
    """A real-size, randomly initialised decoder of a packaged acids-rave config.

    Export state assumed (what a trained export of the paper's kind looks like): user latent
    ``latent_size`` (8) of the internal 128, PCA = identity, mean = 0, noise branch active; the
    PQMF filters are designed exactly like acids-rave's (100 dB, 16 bands). Weights use PyTorch's
    default conv init. The audio is meaningless; it is for plumbing and speed, and says so.
    """
    spec = config_spec(config, **overrides)
    gen = spec[1]
    hop = spec[2][0]
    for n in _walk(gen[1]):
        if n[0] == "convt":
            hop *= n[5]
    meta = {
        "kind": "rave", "architecture": config, "generator": gen[0],
        "sample_rate": CONFIGS[config]["sample_rate"], "latent_size": int(latent_size),
        "full_latent_size": int(spec[3]), "hop": int(hop), "n_band": spec[2][0],
        "source": None, "sha256": None, "trained": False, "seed": int(seed), "spec": spec,
    }
    desc = f"UNTRAINED RAVE {config} (random init, seed {seed})"
    log.warning("%s: decoded audio is noise-like, not a trained model", desc)
    return build_untrained(spec, meta, seed, desc)


def is_conv_weight(name: str) -> bool:
    """Whether a params key is a generator convolution's weight (cast to bf16 under precision =
    bfloat16; the PCA, biases, Snake alphas and PQMF filters stay float32)."""
    return name.endswith("_w") and name != "pqmf_w"


def _walk(node):
    if node[0] in ("seq", "sum"):
        for c in node[1]:
            yield from _walk(c)
    elif node[0] == "res":
        yield from _walk(node[1])
    else:
        yield node


def load(path) -> RaveDecoder:
    """Load a converted model directory (``lvns convert rave X.ts --out DIR``), or convert a .ts
    in memory (needs torch) when ``path`` is a ``.ts`` file."""
    import jax.numpy as jnp
    import jax

    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".ts"):
        from lvns_jax.models.rave.convert import params_from_ts
        from lvns_jax.weights_io import sha256_of

        spec, params, meta = params_from_ts(path)
        meta.update({"source": os.path.basename(path), "sha256": sha256_of(path), "trained": True})
    else:
        from lvns_jax.weights_io import load_params

        params, meta = load_params(path, kind="rave")
        if "spec" not in meta:
            raise WeightsError(f"{path}/meta.json has no decoder spec; re-convert with `lvns convert rave`")
        spec = to_tuple(meta["spec"])
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), dict(params))
    trained = bool(meta.get("trained", True))
    desc = f"RAVE {meta.get('architecture')} from {meta.get('source') or path}"
    if not trained:
        desc = "UNTRAINED " + desc
    return RaveDecoder(spec, params, meta, trained=trained, description=desc)


__all__ = ["load", "untrained", "config_spec", "is_conv_weight", "RaveDecoder", "RaveModule", "CONFIGS"]
