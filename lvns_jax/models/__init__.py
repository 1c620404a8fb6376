"""Models the engine plugs in: a decoder (latents -> audio) and an embedder (audio -> vectors).

The engine only sees :class:`Models`: two pure functions and their parameters. Parameters are
passed to the jitted step as arguments (not baked in as constants), so compile time does not grow
with model size.

* ``decode(decoder_params, z (b, C, T), key) -> audio (b, T * hop)``
* ``embed(embedder_params, audio (b, S)) -> (b, D)``
"""

from __future__ import annotations

import dataclasses
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


def num_chunks(b: int, chunk_size: int) -> int:
    """Number of batches of at most ``chunk_size`` that ``b`` individuals are evaluated in."""
    return -(-b // min(chunk_size, b))


def split_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
    """(b, ...) -> (n, c, ...): ``n = num_chunks(b, chunk_size)`` balanced chunks of ``c = ceil(b / n)``
    (100 with chunk_size 32 -> 4 x 25, not 4 x 32), zero-padded at the end when b is not a multiple."""
    b = x.shape[0]
    n = num_chunks(b, chunk_size)
    c = -(-b // n)
    return jnp.pad(x, ((0, n * c - b),) + ((0, 0),) * (x.ndim - 1)).reshape(n, c, *x.shape[1:])


def merge_chunks(y: jax.Array, b: int) -> jax.Array:
    """Inverse of :func:`split_chunks`: (n, c, ...) -> the first ``b`` rows of (n * c, ...)."""
    return y.reshape(-1, *y.shape[2:])[:b]
