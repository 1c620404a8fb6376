"""Embedders (audio -> vectors): the ``embedder`` config key picks one.

* ``embedder = "toy"``: the toy embedder (:mod:`lvns_jax.models.toy`; NOT an audio model, for tests);
* ``embedder = "untrained:vggish"`` (default) / ``"untrained:panns"``: VGGish / PANNs CNN14 with
  random weights (UNTRAINED);
* ``embedder = DIR``: weights converted by ``lvns convert vggish`` or ``lvns convert panns``
  (the directory's meta.json names the architecture).

The legacy key ``vggish = untrained | toy | DIR`` is read as ``embedder`` (with a note).
A builder ``build(cfg, weights, sample_rate, clip_samples, platform) -> Embedder`` is registered under a
name (``platform``: where it will run, "cpu", "gpu", "tpu": XLA:TPU has no float64 FFT, so VGGish's
exact front end runs in float32 there, see ``frontend_precision``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from flax import struct

import logging

from lvns_jax import plugins
from lvns_jax.errors import ConfigError

log = logging.getLogger("lvns_jax")

# meta.json "kind" (or "architecture") of converted weights -> embedder plug-in
ARCHITECTURES = {"vggish": "vggish", "panns": "panns", "panns_cnn14": "panns"}


@struct.dataclass
class Embedder:
    params: Any
    embed: Callable = struct.field(pytree_node=False)  # embed(params, audio (b, S)) -> (b, D)
    description: str = struct.field(pytree_node=False)
    trained: bool = struct.field(pytree_node=False)
    # differentiable variant (same values up to float32 rounding) for the gradient emitter; None: embed
    embed_grad: Callable | None = struct.field(pytree_node=False, default=None)


def name_of(spec: str) -> tuple[str, str]:
    """``(plug-in name, weights: "untrained" or a directory)`` of an ``embedder`` spec."""
    if spec in plugins.names("embedder"):
        return spec, "untrained"
    if spec.startswith("untrained:"):
        name = spec.split(":", 1)[1]
        plugins.builder("embedder", name, "embedder")
        return name, "untrained"
    meta = os.path.join(spec, "meta.json")
    if not os.path.isfile(meta):
        raise ConfigError(f"embedder: weights directory {spec!r} not found (no meta.json); allowed: a directory "
                          f"made by `lvns convert vggish|panns`, toy, or untrained:NAME with NAME one of "
                          f"{', '.join(n for n in plugins.names('embedder') if n != 'toy')}")
    try:
        with open(meta) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"embedder: {meta} is unreadable ({e})") from None
    arch = m.get("kind") if m.get("kind") in ARCHITECTURES else m.get("architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"embedder: {spec!r} holds {arch!r} weights, not an embedder "
                          f"({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch], spec


@plugins.register("embedder", "toy")
def build_toy(cfg, weights: str, sample_rate: int, clip_samples: int, platform: str = "cpu") -> Embedder:
    from lvns_jax.models import toy  # float32 whatever the precision key says

    return Embedder(toy.embedder_params(), toy.embed, "TOY embedder (not VGGish, for tests)", False)


#: Platforms whose XLA backend runs float64 FFTs (VGGish's exact front end); elsewhere (TPU) it runs in float32.
FLOAT64_FFT_PLATFORMS = ("cpu", "gpu", "cuda", "rocm")


def frontend_float64(cfg, platform: str) -> bool:
    """Whether VGGish's front end runs its float64 island (``frontend_precision``: auto | float64 | float32)."""
    if cfg.frontend_precision == "auto":
        return platform in FLOAT64_FFT_PLATFORMS
    if cfg.frontend_precision == "float64" and platform not in FLOAT64_FFT_PLATFORMS:
        raise ConfigError(f"frontend_precision: float64 needs a float64 FFT, which XLA:{platform.upper()} does not "
                          f"have; use auto or float32")
    return cfg.frontend_precision == "float64"


def is_kernel(name: str) -> bool:
    """Whether a params path is a conv / dense kernel (stored in bf16 under precision = bfloat16)."""
    return name.endswith("kernel")


@plugins.register("embedder", "vggish")
def build_vggish(cfg, weights: str, sample_rate: int, clip_samples: int, platform: str = "cpu") -> Embedder:
    from lvns_jax.models import precision, vggish
    from lvns_jax.models.vggish import model as vggish_model
    from lvns_jax.models.vggish.frontend import num_examples

    if num_examples(clip_samples, sample_rate) < 1:  # VGGish embeds 0.96 s examples: no embedding (NaN)
        frames = cfg.latent_frames
        hop = clip_samples // frames
        t = frames
        while num_examples(t * hop, sample_rate) < 1:
            t += 1
        raise ConfigError(f"latent_frames: {frames} frames x hop {hop} = {clip_samples} samples at {sample_rate} Hz "
                          f"is shorter than one 0.96 s VGGish example; use latent_frames >= {t}")
    model = vggish.untrained(seed=0) if weights == "untrained" else vggish.load(weights)

    policy = precision.policy(cfg.precision, platform)

    def embed_grad(params, audio):  # the float64 front-end island is not differentiable: float32 front end
        return vggish_model.embed(params, audio, sample_rate, high_precision=False, policy=policy)

    exact = frontend_float64(cfg, platform)
    if not exact:
        log.info("VGGish front end in float32 (frontend_precision = %s, platform %s)", cfg.frontend_precision, platform)
    params = precision.cast_params(model.params, policy, is_kernel)
    return Embedder(params, model.pure_embed(sample_rate, high_precision=exact, policy=policy),
                    model.description, model.trained, embed_grad)


@plugins.register("embedder", "panns")
def build_panns(cfg, weights: str, sample_rate: int, clip_samples: int, platform: str = "cpu") -> Embedder:
    """PANNs CNN14 (:mod:`lvns_jax.models.panns`): resampled to 32 kHz, 64-band log-mel, 2048-d embedding."""
    from lvns_jax.models import panns, precision

    model = panns.untrained(seed=0) if weights == "untrained" else panns.load(weights)
    need = model.min_samples(sample_rate)
    if clip_samples < need:
        raise ConfigError(f"latent_frames: {clip_samples} samples at {sample_rate} Hz is shorter than the "
                          f"{need} samples CNN14 needs; use more latent_frames")
    policy = precision.policy(cfg.precision, platform)
    params = precision.cast_params(model.params, policy, is_kernel)
    return Embedder(params, model.pure_embed(sample_rate, policy), model.description, model.trained)
