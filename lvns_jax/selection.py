"""Survival: which pool members form the next container.

The pool is ``container + children`` (indices ``[0, N)`` are the container, ``[N, N+B)`` children).
All functions return (N,) int32 pool indices and are jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def most_sparse(sparseness: jax.Array, n: int) -> jax.Array:
    """The ``n`` members with the largest sparseness, most sparse first.

    Ties are broken by pool index (lower first), deterministically: ``lax.top_k`` keeps the lower
    index first among equal values. NaN counts as ``-inf`` (never preferred).
    """
    s = jnp.where(jnp.isnan(sparseness), -jnp.inf, sparseness)
    _, idx = jax.lax.top_k(s, n)
    return idx.astype(jnp.int32)


def uniform_random(key: jax.Array, sparseness: jax.Array, n: int) -> jax.Array:
    """Control: ``n`` members drawn uniformly without replacement, ignoring novelty.

    Members with sparseness ``-inf``/NaN (invalid individuals) are only taken if too few valid
    members exist.
    """
    scores = jax.random.uniform(key, sparseness.shape)
    valid = jnp.isfinite(sparseness) | (sparseness == jnp.inf)
    _, idx = jax.lax.top_k(jnp.where(valid, scores, -1.0 - scores), n)
    return idx.astype(jnp.int32)


def children_only(container_size: int, breed_size: int) -> jax.Array:
    """The original's ``replace`` mode: the children become the container (needs B == N)."""
    if breed_size != container_size:
        raise ValueError(f"replace selection needs breed_size == container_size, got {breed_size} != {container_size}")
    return jnp.arange(container_size, container_size + breed_size, dtype=jnp.int32)


def select(method: str, key: jax.Array, sparseness: jax.Array, container_size: int) -> jax.Array:
    """Dispatch on the configured ``selection`` method."""
    if method == "novelty":
        return most_sparse(sparseness, container_size)
    if method == "random":
        return uniform_random(key, sparseness, container_size)
    if method == "replace":
        return children_only(container_size, sparseness.shape[0] - container_size)
    raise ValueError(f"selection must be novelty, random or replace, got {method!r}")
