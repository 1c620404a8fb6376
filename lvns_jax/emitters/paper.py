"""The paper's emitter (``emitter = "paper"``): crossover of two container members + one mutated column.

Semantics of the original LVNS-RAVE (``EPrior.mutate``), as in :mod:`lvns_jax.operators`: child
slot ``j`` takes first parent ``perm1[j]`` and second parent ``perm2[j]`` of two random permutations
of the container drawn from the generation key (so a mix of emitters shares one parent plan), the
crossover point is shared by the generation (``crossover = "shared"``) or the child's own
(``per_child``), and the mutated column and its values are the child's own draws (its identity key).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lvns_jax import individuals, operators, plugins
from lvns_jax.emitters import EmitContext


def parents(ctx: EmitContext, start: int, count: int) -> tuple[jax.Array, jax.Array]:
    """First and second parents (count,) of child slots [start, start + count)."""
    n = ctx.latents.shape[0]
    k1, k2, _ = jax.random.split(ctx.key, 3)
    first = jax.random.permutation(k1, n)[start:start + count].astype(jnp.int32)
    second = jax.random.permutation(k2, n)[start:start + count].astype(jnp.int32)
    return first, second


def _own_keys(ctx: EmitContext, start: int, count: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = individuals.stream(ctx.child_keys[start:start + count], individuals.MUTATION)
    k = jax.vmap(lambda kk: jax.random.split(kk, 3))(keys)
    return k[:, 0], k[:, 1], k[:, 2]


def crossover_points(ctx: EmitContext, start: int, count: int, per_child: bool) -> jax.Array:
    """Points in [1, T-3]: the generation's shared point, or each child's own."""
    t = ctx.latents.shape[-1]
    if per_child:
        k_point, _, _ = _own_keys(ctx, start, count)
        return jax.vmap(lambda kk: jax.random.randint(kk, (), 1, t - 2, dtype=jnp.int32))(k_point)
    p = jax.random.randint(jax.random.split(ctx.key, 3)[2], (), 1, t - 2, dtype=jnp.int32)
    return jnp.full((count,), p, jnp.int32)


def crossed(ctx: EmitContext, start: int, count: int, per_child: bool) -> tuple[jax.Array, jax.Array]:
    """The crossed-over children of slots [start, start + count) (before mutation) and their points."""
    first, second = parents(ctx, start, count)
    points = crossover_points(ctx, start, count, per_child)
    return operators.crossover(ctx.latents[first], ctx.latents[second], points), points


@dataclasses.dataclass(frozen=True)
class PaperEmitter:
    crossover: str = "shared"  # shared | per_child
    mutation: str = "add"  # add | replace
    distribution: str = "normal"  # normal | uniform
    scale: float = 1.0
    mutate_last_frame: bool = False

    def emit(self, ctx: EmitContext, start: int, count: int):
        c, t = ctx.latents.shape[1:]
        children, points = crossed(ctx, start, count, self.crossover == "per_child")
        _, k_col, k_val = _own_keys(ctx, start, count)
        high = t if self.mutate_last_frame else t - 1
        columns = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, high, dtype=jnp.int32))(k_col)
        values = jax.vmap(lambda kk: operators.mutation_values(kk, 1, c, self.distribution, self.scale)[0])(k_val)
        return operators.mutate(children, columns, values, self.mutation), {"crossover_point": points[0]}

    def report(self, extra, evaluated, start: int, count: int) -> dict:
        return {"crossover_point": extra["crossover_point"]}


def from_config(cfg) -> PaperEmitter:
    return PaperEmitter(crossover=cfg.crossover, mutation="add" if cfg.mutation == "gradient" else cfg.mutation,
                        distribution=cfg.mutation_distribution, scale=cfg.mutation_scale,
                        mutate_last_frame=cfg.mutate_last_frame)


@plugins.register("emitter", "paper")
def build(cfg):
    return from_config(cfg)
