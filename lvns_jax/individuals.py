"""Individuals: their identity keys, and the one chunked map over individuals.

Identity
--------
An individual is named by ``(born, slot)``: the generation that made it (0 for the initial
container) and its index among that generation's children (its container index for the initial
container). Every random draw that belongs to an individual comes from
:func:`individual_keys` of its identity, never from its chunk or its device: decoder noise and
latent completion (``NOISE``), its mutation (``MUTATION``), the noise of its gradient steps
(``GRADIENT``), the random archive's draw (``ARCHIVE``), its audio when the container is dumped to WAV (the same ``NOISE`` key, so a WAV file
is the very sound that was embedded). So ``chunk_size``, ``knn_chunk``, the device count and the
host count change memory and speed only.

The map
-------
:func:`map_individuals` applies a per-chunk function to ``(b, ...)`` arrays (and per-individual key
arrays) in ``ceil(b / chunk_size)`` balanced chunks with ``lax.map`` (bounded memory); on a mesh
each device maps its own slice (``shard_map``). Evaluation, gradient steps, audio dumps and
``lvns bench`` all go through it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# Streams of an individual's key (fold_in constants): one per kind of draw.
NOISE, MUTATION, GRADIENT, ARCHIVE = 0, 1, 2, 3


def individual_keys(root: jax.Array, born: jax.Array, slot: jax.Array) -> jax.Array:
    """(b,) keys of individuals ``(born[i], slot[i])`` under the run's identity root key."""
    born = jnp.broadcast_to(jnp.asarray(born, jnp.int32), jnp.shape(slot))
    return jax.vmap(lambda g, j: jax.random.fold_in(jax.random.fold_in(root, g), j))(born, jnp.asarray(slot, jnp.int32))


def stream(keys: jax.Array, which: int) -> jax.Array:
    """Per-individual keys of one stream (``NOISE``, ``MUTATION``, ``GRADIENT``, ``ARCHIVE``)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, which))(keys)


def num_chunks(b: int, chunk_size: int) -> int:
    """Number of batches of at most ``chunk_size`` that ``b`` individuals are processed in."""
    return -(-b // max(1, min(chunk_size, b)))


def _split(x: jax.Array, n: int, c: int) -> jax.Array:
    """(b, ...) -> (n, c, ...), padded at the end by repeating row 0 (works for key arrays too)."""
    b = x.shape[0]
    if n * c != b:
        x = x[jnp.where(jnp.arange(n * c) < b, jnp.arange(n * c), 0)]
    return x.reshape(n, c, *x.shape[1:])


def _local_map(fn: Callable, args: tuple, chunk_size: int):
    b = args[0].shape[0]
    n = num_chunks(b, chunk_size)
    c = -(-b // n)
    out = jax.lax.map(lambda a: fn(*a), tuple(_split(a, n, c) for a in args))
    return jax.tree_util.tree_map(lambda y: y.reshape(n * c, *y.shape[2:])[:b], out)


def map_individuals(fn: Callable, args: tuple, chunk_size: int, mesh=None, axis: str = "pop",
                    shared: tuple = ()):
    """``fn(*shared, *chunk_args) -> pytree of (c, ...)`` over chunks of the leading axis of ``args``.

    ``args`` are arrays (or key arrays) with the individuals on axis 0; ``shared`` are passed whole
    to every chunk (e.g. model parameters). With a ``mesh`` of several devices, each device maps its
    own slice (the leading axis must divide by the device count). The result of an individual does
    not depend on the chunk it falls in, apart from float rounding in batched kernels.
    """
    if mesh is None or mesh.shape[axis] == 1:
        return _local_map(lambda *a: fn(*shared, *a), args, chunk_size)

    def body(shared_, *local):
        return _local_map(lambda *a: fn(*shared_, *a), local, chunk_size)

    out_shape = jax.eval_shape(lambda s, *a: fn(*s, *a), shared, *(a[:1] for a in args))
    out_specs = jax.tree_util.tree_map(lambda _: P(axis), out_shape)
    return jax.shard_map(body, mesh=mesh, in_specs=(P(),) + (P(axis),) * len(args), out_specs=out_specs,
                         check_vma=False)(shared, *args)


def decode_each(models, z: jax.Array, keys: jax.Array) -> jax.Array:
    """Decode ``z`` (b, C, T) with individual ``i``'s noise from ``keys[i]`` only -> audio (b, S).

    The decoder is vmapped over one-individual batches: XLA batches the convolutions back into one
    (b, ...) call, and each individual's random draws come from its own key.
    """
    return jax.vmap(lambda zi, ki: models.decode(models.decoder_params, zi[None], ki)[0])(z, keys)


def evaluate_chunk(models, z: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Decode + embed one chunk: embeddings (c, D) float32 and a (c,) mask of finite audio and embedding."""
    audio = decode_each(models, z, keys)
    emb = models.embed(models.embedder_params, audio).astype(jnp.float32)
    ok = jnp.all(jnp.isfinite(audio), axis=-1) & jnp.all(jnp.isfinite(emb), axis=-1)
    return emb, ok


def evaluate(models, latents: jax.Array, noise_keys: jax.Array, chunk_size: int, mesh=None):
    """Embeddings (b, D) and validity (b,) of ``latents`` decoded with their own noise keys."""
    return map_individuals(evaluate_chunk, (latents, noise_keys), chunk_size, mesh, shared=(models,))


def decode(models, latents: jax.Array, noise_keys: jax.Array, chunk_size: int, mesh=None) -> jax.Array:
    """Audio (b, S) of ``latents`` decoded with their own noise keys (for WAV dumps and bench)."""
    return map_individuals(decode_each, (latents, noise_keys), chunk_size, mesh, shared=(models,))
