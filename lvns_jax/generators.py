"""Generators (latents -> audio): the ``rave`` config key picks one.

* ``rave = "toy"``: the toy decoder (:mod:`lvns_jax.models.toy`; NOT an audio model, for tests);
* ``rave = "untrained:v1" | "untrained:v2" | "untrained:v2_small"``: RAVE with random weights (UNTRAINED);
* ``rave = DIR``: RAVE weights converted by ``lvns convert rave`` (:mod:`lvns_jax.models.rave`).

A builder ``build(cfg, platform) -> Generator`` is registered under a name; the spec names it directly
(``toy``) or, for anything else, the ``rave`` generator reads it (``platform``: where it will run,
"cpu", "gpu", "tpu"; the ``precision`` key's bfloat16 lowering depends on it).
"""

from __future__ import annotations

from typing import Any, Callable

from flax import struct

from lvns_jax import plugins


@struct.dataclass
class Generator:
    params: Any
    decode: Callable = struct.field(pytree_node=False)  # decode(params, z (b, C, T), key) -> (b, T * hop)
    sample_rate: int = struct.field(pytree_node=False)
    hop: int = struct.field(pytree_node=False)
    latent_channels: int = struct.field(pytree_node=False)
    description: str = struct.field(pytree_node=False)
    trained: bool = struct.field(pytree_node=False)


def name_of(spec: str) -> str:
    """The generator plug-in a ``rave`` spec names."""
    return spec if spec in plugins.names("generator") else "rave"


@plugins.register("generator", "toy")
def build_toy(cfg, platform: str = "cpu") -> Generator:  # float32 whatever the precision key says
    from lvns_jax.models import toy

    return Generator(toy.decoder_params(cfg.latent_channels), toy.decode_noisy if cfg.noise else toy.decode,
                     toy.TOY_SAMPLE_RATE, toy.TOY_HOP, cfg.latent_channels, "TOY decoder (not RAVE, for tests)", False)


@plugins.register("generator", "rave")
def build_rave(cfg, platform: str = "cpu") -> Generator:
    from lvns_jax.models import precision, rave

    if cfg.rave.startswith("untrained:"):
        model = rave.untrained(cfg.rave.split(":", 1)[1], seed=0)
    else:
        model = rave.load(cfg.rave)
    policy = precision.policy(cfg.precision, platform)
    params = precision.cast_params(model.params, policy, rave.is_conv_weight)
    return Generator(params, model.pure_decode(noise=cfg.noise, policy=policy), model.sample_rate, model.hop,
                     model.latent_size, model.description, model.trained)
