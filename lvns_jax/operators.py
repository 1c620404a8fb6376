"""Variation operators: parent choice, crossover along time, one-column mutation.

All functions are pure and jit-able; shapes are static. Latents are (N, C, T) float32.

Semantics follow the original LVNS-RAVE (``EPrior.mutate``):

* parents: the first B of a random permutation of the container (first parents) and the first B
  of an independent permutation (second parents);
* crossover: one point p ~ U{1, ..., T-3} per generation shared by all children (``shared``) or one
  per child (``per_child``); frames [0, p) come from the first parent, [p, T) from the second;
* mutation: exactly one column t ~ U{0, ..., T-2} per child (the original never mutates the last
  frame; ``mutate_last_frame=True`` draws t in [0, T-1]); v in R^C ~ N(0,1) or U[0,1), times
  ``scale``; ``add``: z[:, t] += v, ``replace``: z[:, t] = v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Breeding:
    """What :func:`breed` did, for tests and metrics."""

    first_parent: jax.Array  # (B,) int32 container indices
    second_parent: jax.Array  # (B,) int32
    crossover_point: jax.Array  # (B,) int32 (all equal for "shared")
    mutation_column: jax.Array  # (B,) int32
    mutation_value: jax.Array  # (B, C) float32, after scaling


def choose_parents(key: jax.Array, container_size: int, breed_size: int) -> tuple[jax.Array, jax.Array]:
    """First B of two independent random permutations of range(N)."""
    k1, k2 = jax.random.split(key)
    first = jax.random.permutation(k1, container_size)[:breed_size]
    second = jax.random.permutation(k2, container_size)[:breed_size]
    return first.astype(jnp.int32), second.astype(jnp.int32)


def crossover_points(key: jax.Array, breed_size: int, frames: int, per_child: bool) -> jax.Array:
    """Points p in [1, T-3]: one shared by all children, or one per child."""
    shape = (breed_size,) if per_child else (1,)
    p = jax.random.randint(key, shape, 1, frames - 2, dtype=jnp.int32)
    return jnp.broadcast_to(p, (breed_size,))


def crossover(first: jax.Array, second: jax.Array, points: jax.Array) -> jax.Array:
    """Children (B, C, T): frames [0, p) of ``first``, frames [p, T) of ``second``."""
    t = jnp.arange(first.shape[-1])
    take_first = t[None, None, :] < points[:, None, None]
    return jnp.where(take_first, first, second)


def mutation_values(key: jax.Array, breed_size: int, channels: int, distribution: str,
                    scale: float) -> jax.Array:
    if distribution == "normal":
        v = jax.random.normal(key, (breed_size, channels), jnp.float32)
    elif distribution == "uniform":
        v = jax.random.uniform(key, (breed_size, channels), jnp.float32)
    else:
        raise ValueError(f"mutation distribution must be 'normal' or 'uniform', got {distribution!r}")
    return v * jnp.float32(scale)


def mutate(children: jax.Array, columns: jax.Array, values: jax.Array, method: str) -> jax.Array:
    """Change column ``columns[i]`` of child i by ``values[i]`` (add or replace)."""
    hit = jnp.arange(children.shape[-1])[None, None, :] == columns[:, None, None]
    v = values[:, :, None]
    if method == "add":
        return jnp.where(hit, children + v, children)
    if method == "replace":
        return jnp.where(hit, v, children)
    raise ValueError(f"mutation method must be 'add' or 'replace', got {method!r}")


def breed(key: jax.Array, container: jax.Array, breed_size: int, *, crossover_mode: str = "shared",
          mutation: str = "add", distribution: str = "normal", scale: float = 1.0,
          mutate_last_frame: bool = False) -> tuple[jax.Array, Breeding]:
    """Make ``breed_size`` children from ``container`` (N, C, T): crossover, then one mutated column."""
    n, c, t = container.shape
    k_par, k_point, k_col, k_val = jax.random.split(key, 4)
    first, second = choose_parents(k_par, n, breed_size)
    points = crossover_points(k_point, breed_size, t, crossover_mode == "per_child")
    children = crossover(container[first], container[second], points)
    high = t if mutate_last_frame else t - 1
    columns = jax.random.randint(k_col, (breed_size,), 0, high, dtype=jnp.int32)
    values = mutation_values(k_val, breed_size, c, distribution, scale)
    children = mutate(children, columns, values, mutation)
    return children, Breeding(first, second, points, columns, values)
