"""Models the engine plugs in: a decoder (latents -> audio) and an embedder (audio -> vectors).

The engine only sees :class:`Models`: two pure functions and their parameters. Parameters are
passed to the jitted step as arguments (not baked in as constants), so compile time does not grow
with model size.

* ``decode(decoder_params, z (b, C, T), key) -> audio (b, T * hop)``
* ``embed(embedder_params, audio (b, S)) -> (b, D)``
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

log = logging.getLogger("lvns_jax")


@struct.dataclass
class Models:
    decoder_params: Any
    embedder_params: Any
    decode: Callable = struct.field(pytree_node=False)
    embed: Callable = struct.field(pytree_node=False)
    sample_rate: int = struct.field(pytree_node=False)
    hop: int = struct.field(pytree_node=False)
    latent_channels: int = struct.field(pytree_node=False)
    description: tuple[str, ...] = struct.field(pytree_node=False, default=())
    trained: bool = struct.field(pytree_node=False, default=False)
    # Differentiable variant of ``embed`` (same signature, same values up to float32 rounding) for the
    # gradient mutation (lvns_jax.gradient); None: ``embed`` itself is differentiable.
    embed_grad: Callable | None = struct.field(pytree_node=False, default=None)

    def embedding_dim(self, frames: int) -> int:
        z = jax.ShapeDtypeStruct((1, self.latent_channels, frames), "float32")
        audio = jax.eval_shape(self.decode, self.decoder_params, z, jax.random.key(0))
        return int(jax.eval_shape(self.embed, self.embedder_params, audio).shape[-1])
