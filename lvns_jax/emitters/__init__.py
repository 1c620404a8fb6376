"""Emitters: how a generation's children are made from the container.

An emitter is a frozen dataclass (its hyper-parameters, static under ``jit``) with::

    emit(ctx: EmitContext, start: int, count: int) -> (children (count, C, T), extra)
    report(extra, evaluated: Evaluated, start: int, count: int) -> dict of scalar metrics

``start``/``count`` are the emitter's slots among the generation's children (a mix of emitters
gives each its own range; child ``j``'s random draws come from ``ctx.child_keys[j]``, its identity
key, see :mod:`lvns_jax.individuals`). Built-in emitters: ``paper`` (crossover + one-column
mutation, the original LVNS-RAVE), ``gradient`` (crossover + optax steps up the sparseness
gradient), ``mix`` (shares of other emitters). A builder ``build(cfg, count)`` is registered with
``@plugins.register("emitter", NAME)``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class EmitContext:
    """What an emitter sees of the current generation."""

    key: jax.Array  # generation-level key: parent permutations, the shared crossover point
    latents: jax.Array  # (N, C, T) container
    embeddings: jax.Array  # (N, D) container embeddings
    child_keys: jax.Array  # (B,) identity keys of this generation's children
    models: Any  # lvns_jax.models.Models
    chunk_size: int = struct.field(pytree_node=False, default=32)


@struct.dataclass
class Evaluated:
    """The children after evaluation and scoring (for emitters' metrics)."""

    embeddings: jax.Array  # (B, D), NaN rows where invalid
    ok: jax.Array  # (B,) bool
    sparseness: jax.Array  # (B,) pool sparseness, NaN where invalid
    container_embeddings: jax.Array  # (N, D) the container the children were made from
