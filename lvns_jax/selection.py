"""Survival: which pool members form the next container.

The pool is ``container + children`` (indices ``[0, N)`` are the container, ``[N, N+B)`` children).
All functions return (N,) int32 pool indices and are jit-able. Selector plug-ins (``selection``
config key): ``novelty``, ``random``, ``replace``; each has ``select(key, sparseness, n)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lvns_jax import plugins
from lvns_jax.errors import ConfigError


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


@dataclasses.dataclass(frozen=True)
class Novelty:
    """Keep the N most sparse of the pool (the paper)."""

    def select(self, key: jax.Array, sparseness: jax.Array, n: int) -> jax.Array:
        return most_sparse(sparseness, n)


@dataclasses.dataclass(frozen=True)
class Random:
    """Control: N pool members uniformly at random."""

    def select(self, key: jax.Array, sparseness: jax.Array, n: int) -> jax.Array:
        return uniform_random(key, sparseness, n)


@dataclasses.dataclass(frozen=True)
class Replace:
    """The original's ``replace``: the children become the container (breed_size == container_size)."""

    def select(self, key: jax.Array, sparseness: jax.Array, n: int) -> jax.Array:
        return children_only(n, sparseness.shape[0] - n)


@plugins.register("selector", "novelty")
def build_novelty(cfg):
    return Novelty()


@plugins.register("selector", "random")
def build_random(cfg):
    return Random()


@plugins.register("selector", "replace")
def build_replace(cfg):
    if cfg.breed_size != cfg.container_size:
        raise ConfigError(f"breed_size: selection = replace needs breed_size == container_size "
                          f"(got {cfg.breed_size!r})")
    return Replace()
