"""Tiny differentiable stand-ins for RAVE and VGGish, for tests and smoke runs.

They are NOT audio models: the decoder maps each latent frame linearly to ``hop`` samples (tanh),
the embedder averages a ReLU projection of non-overlapping audio frames. They make the engine's
tests fast while exercising the same code paths (chunking, noise keys, NaN handling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOY_SAMPLE_RATE = 16000
TOY_HOP = 64
TOY_DIM = 16
_FRAME = 128


def decoder_params(channels: int, hop: int = TOY_HOP, seed: int = 0) -> dict:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (channels, hop)) / jnp.sqrt(channels),
            "b": 0.1 * jax.random.normal(k2, (hop,))}


def decode(params: dict, z: jax.Array, key: jax.Array, noise: bool = False) -> jax.Array:
    """(b, C, T) -> (b, T * hop)."""
    frames = jnp.tanh(jnp.einsum("bct,ch->bth", z, params["w"]) + params["b"])
    audio = frames.reshape(z.shape[0], -1)
    if noise:
        audio = audio + 0.01 * jax.random.normal(key, audio.shape)
    return audio


def decode_noisy(params: dict, z: jax.Array, key: jax.Array) -> jax.Array:
    return decode(params, z, key, noise=True)


def embedder_params(dim: int = TOY_DIM, seed: int = 1) -> dict:
    return {"w": jax.random.normal(jax.random.key(seed), (_FRAME, dim)) / jnp.sqrt(_FRAME)}


def embed(params: dict, audio: jax.Array) -> jax.Array:
    """(b, S) -> (b, D): mean over frames of relu(frame @ W); S must be a multiple of 128."""
    b, s = audio.shape
    frames = audio[:, : s - s % _FRAME].reshape(b, -1, _FRAME)
    return jnp.mean(jax.nn.relu(frames @ params["w"]), axis=1)
