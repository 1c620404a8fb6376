"""Gradient-guided novelty mutation (beyond the paper): children climb the sparseness gradient.

With the decoder and the embedder in JAX, ``latent -> audio -> embedding -> sparseness`` is one
differentiable function. Instead of (or besides) the paper's random one-column mutation, a child can
take a few optimiser steps that increase its sparseness with respect to the current container, in
the spirit of QDax's gradient-informed variation operators (PGA-ME, OMG-MEGA).

* Start: the crossed-over child (crossover of two container members, no random mutation).
* Objective, maximised per child with optax (``adam`` or ``sgd``)::

      s(z) - prior_weight * mean(relu(|z| - prior_bound) ** 2)

  where ``s`` is the smooth surrogate of kNN sparseness: the mean Euclidean distance from the
  child's embedding to its k nearest container embeddings (``nearest`` rule; the k farthest for the
  ``farthest`` rule), with the neighbour indices chosen on stopped distances. Its value is exactly
  the kNN sparseness against the container; only the choice of neighbours is not differentiated.
  The penalty keeps latents within ``prior_bound`` standard deviations of RAVE's N(0, 1) prior.
* Decoder noise (``noise = true``) uses a fresh key per optimiser step, derived from the child's
  identity key (``GRADIENT`` stream): chunking and sharding change nothing.
* NaN gradients (e.g. from an unstable decoder) are zeroed by ``optax.zero_nans``.
* The objective embeds with ``models.embed_grad`` when set (VGGish: its float32 front end, since the
  float64 island of the exact front end is not differentiable); selection keeps using ``embed``.

Plug-in: ``emitter = "gradient"`` (or the legacy ``mutation = "gradient"``) makes every child a
gradient child; in a mix (``emitter = "mix"``, ``emitter_mix = "gradient:0.5,paper"``, or the legacy
``gradient_fraction``) the gradient children take the first slots and the paper's children the
others, bit-identical to a run without gradient mutation (same parents, same identity keys).

Everything is pure and runs inside the jitted generation step (:func:`lvns_jax.search.step`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lvns_jax import individuals, plugins
from lvns_jax.emitters import EmitContext, Evaluated
from lvns_jax.emitters import paper as paper_emitter

OPTIMIZERS = ("adam", "sgd")
_EPS = 1e-12  # distances below sqrt(_EPS) have zero gradient (a child equal to a container member)


@struct.dataclass
class GradientInfo:
    """Per gradient child: what the optimisation did (for metrics and tests)."""

    start_sparseness: jax.Array  # (G,) surrogate sparseness of the starting point
    last_sparseness: jax.Array  # (G,) surrogate sparseness before the last optimiser step
    grad_norm: jax.Array  # (G,) L2 norm of the objective's gradient w.r.t. the latent, mean over steps


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """optax optimiser that *minimises*; NaN gradient entries are zeroed first."""
    if name == "adam":
        base = optax.adam(learning_rate)
    elif name == "sgd":
        base = optax.sgd(learning_rate)
    else:
        raise ValueError(f"gradient optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return optax.chain(optax.zero_nans(), base)


def surrogate_sparseness(emb: jax.Array, container: jax.Array, k: int, rule: str = "nearest") -> jax.Array:
    """Sparseness of each row of ``emb`` (b, D) against ``container`` (N, D): mean distance to its k
    nearest (``nearest``) or k farthest (``farthest``) container members; returns (b,).

    The neighbour indices are chosen on stopped squared distances, so the value is exactly the kNN
    sparseness and the gradient flows through the k chosen distances only. Non-finite container rows
    are never neighbours.
    """
    ok = jnp.all(jnp.isfinite(container), axis=-1)
    cont = jnp.where(ok[:, None], container, 0.0)
    e = jax.lax.stop_gradient(emb)
    d2 = (jnp.sum(e * e, -1)[:, None] + jnp.sum(cont * cont, -1)[None, :]
          - 2.0 * jnp.matmul(e, cont.T, precision=jax.lax.Precision.HIGHEST))
    if rule == "nearest":
        score = -d2
    elif rule == "farthest":
        score = d2
    else:
        raise ValueError(f"sparseness rule must be 'nearest' or 'farthest', got {rule!r}")
    _, idx = jax.lax.top_k(jnp.where(ok[None, :], score, -jnp.inf), k)
    neighbours = cont[idx]  # (b, k, D)
    dist = jnp.sqrt(jnp.maximum(jnp.sum((emb[:, None, :] - neighbours) ** 2, axis=-1), _EPS))
    valid = ok[idx]
    return jnp.sum(jnp.where(valid, dist, 0.0), -1) / jnp.maximum(jnp.sum(valid, -1), 1)


def prior_penalty(z: jax.Array, bound: float) -> jax.Array:
    """(b,) mean over (C, T) of relu(|z| - bound)^2: zero inside the prior's range."""
    excess = jax.nn.relu(jnp.abs(z) - bound)
    return jnp.mean(excess * excess, axis=tuple(range(1, z.ndim)))


def improve(keys: jax.Array, models, latents: jax.Array, container_emb: jax.Array, *,
            steps: int, learning_rate: float, optimizer: str = "adam", k: int, rule: str = "nearest",
            prior_weight: float = 0.0, prior_bound: float = 3.0,
            chunk_size: int = 32) -> tuple[jax.Array, GradientInfo]:
    """Take ``steps`` optimiser steps on each of ``latents`` (G, C, T), maximising its surrogate
    sparseness against ``container_emb`` minus the prior penalty.

    ``keys``: (G,) per-child keys (their ``GRADIENT`` streams), or one key (child i then uses
    ``fold_in(key, i)``). Step ``s`` of child ``i`` decodes with ``fold_in(keys[i], s)``. Children are
    processed in chunks of ``chunk_size`` (:func:`lvns_jax.individuals.map_individuals`); each
    child's objective depends on its own latent and key only, so chunking changes nothing but memory.
    Returns the new latents and a :class:`GradientInfo`.
    """
    g = latents.shape[0]
    if jnp.ndim(keys) == 0:
        keys = jax.vmap(lambda i: jax.random.fold_in(keys, i))(jnp.arange(g))
    tx = make_optimizer(optimizer, learning_rate)
    k = min(k, container_emb.shape[0])

    def objective(z, step_keys):
        audio = individuals.decode_each(models, z, step_keys)
        emb = (models.embed_grad or models.embed)(models.embedder_params, audio).astype(jnp.float32)
        sp = surrogate_sparseness(emb, container_emb, k, rule)
        gain = sp - prior_weight * prior_penalty(z, prior_bound) if prior_weight else sp
        return -jnp.sum(gain), sp  # minimise the negative; children are independent

    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def one_chunk(z0, ckeys):
        def body(carry, s):
            z, opt_state = carry
            step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, s))(ckeys)
            (_, sp), grad = value_and_grad(z, step_keys)
            updates, opt_state = tx.update(grad, opt_state, z)
            norm = jnp.sqrt(jnp.sum(jnp.where(jnp.isfinite(grad), grad, 0.0) ** 2, axis=(1, 2)))
            return (optax.apply_updates(z, updates), opt_state), (sp, norm)

        (z, _), (sp, norm) = jax.lax.scan(body, (z0, tx.init(z0)), jnp.arange(steps))
        return z, GradientInfo(sp[0], sp[-1], jnp.mean(norm, axis=0))

    return individuals.map_individuals(one_chunk, (latents, keys), chunk_size)


@dataclasses.dataclass(frozen=True)
class GradientEmitter:
    """Crossover (the paper's parents and point for the same slots, no random mutation), then
    :func:`improve`."""

    steps: int = 5
    learning_rate: float = 0.05
    optimizer: str = "adam"
    k: int = 30
    rule: str = "nearest"
    prior_weight: float = 1.0
    prior_bound: float = 3.0
    per_child_crossover: bool = False

    def emit(self, ctx: EmitContext, start: int, count: int):
        start_z, points = paper_emitter.crossed(ctx, start, count, self.per_child_crossover)
        keys = individuals.stream(ctx.child_keys[start:start + count], individuals.GRADIENT)
        z, info = improve(keys, ctx.models, start_z, ctx.embeddings, steps=self.steps,
                          learning_rate=self.learning_rate, optimizer=self.optimizer, k=self.k, rule=self.rule,
                          prior_weight=self.prior_weight, prior_bound=self.prior_bound, chunk_size=ctx.chunk_size)
        return z, {"info": info, "crossover_point": points[0]}

    def report(self, extra, ev: Evaluated, start: int, count: int) -> dict:
        """``gradient_norm`` (mean gradient norm per child, mean over steps);
        ``gradient_start_sparseness`` / ``gradient_end_sparseness`` (mean sparseness of the gradient
        children against the container before / after the steps; end: the evaluated children);
        ``gradient_gain`` = end - start; ``gradient_children_sparseness``: their mean sparseness in the
        pool (what selection sees)."""
        info = extra["info"]
        sl = slice(start, start + count)
        cont = ev.container_embeddings
        end = surrogate_sparseness(ev.embeddings[sl], cont, min(self.k, cont.shape[0]), self.rule)
        end = jnp.where(ev.ok[sl], end, jnp.nan)
        return {
            "gradient_norm": jnp.nanmean(info.grad_norm),
            "gradient_start_sparseness": jnp.nanmean(info.start_sparseness),
            "gradient_end_sparseness": jnp.nanmean(end),
            "gradient_gain": jnp.nanmean(end - info.start_sparseness),
            "gradient_children_sparseness": jnp.nanmean(ev.sparseness[sl]),
            "crossover_point": extra["crossover_point"],
        }


def from_config(cfg) -> GradientEmitter:
    return GradientEmitter(steps=cfg.gradient_steps, learning_rate=cfg.gradient_lr, optimizer=cfg.gradient_optimizer,
                           k=cfg.k, rule=cfg.sparseness_rule, prior_weight=cfg.gradient_prior_weight,
                           prior_bound=cfg.gradient_prior_bound, per_child_crossover=cfg.crossover == "per_child")


@plugins.register("emitter", "gradient")
def build(cfg):
    return from_config(cfg)
