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
* Decoder noise (``noise = true``) uses a fresh key per optimiser step (and per chunk).
* NaN gradients (e.g. from an unstable decoder) are zeroed by ``optax.zero_nans``.
* The objective embeds with ``models.embed_grad`` when set (VGGish: its float32 front end, since the
  float64 island of the exact front end is not differentiable); selection keeps using ``embed``.

Modes (:func:`num_gradient_children`): ``mutation = "gradient"``: every child is a gradient child;
``mutation = "add" | "replace"`` with ``gradient_fraction`` in (0, 1]: the first
``round(gradient_fraction * breed_size)`` children are gradient children, the others are the paper's
children, bit-identical to a run without gradient mutation (same keys).

Everything is pure and runs inside the jitted generation step (:func:`lvns_jax.search.step`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lvns_jax import operators
from lvns_jax.config import Config
from lvns_jax.models import Models, merge_chunks, split_chunks

OPTIMIZERS = ("adam", "sgd")
_EPS = 1e-12  # distances below sqrt(_EPS) have zero gradient (a child equal to a container member)


@struct.dataclass
class GradientInfo:
    """Per gradient child: what the optimisation did (for metrics and tests)."""

    start_sparseness: jax.Array  # (G,) surrogate sparseness of the starting point
    last_sparseness: jax.Array  # (G,) surrogate sparseness before the last optimiser step
    grad_norm: jax.Array  # (G,) L2 norm of the objective's gradient w.r.t. the latent, mean over steps


def num_gradient_children(cfg: Config) -> int:
    """How many of the ``breed_size`` children are made by gradient steps."""
    if cfg.mutation == "gradient":
        return cfg.breed_size
    return int(math.floor(cfg.gradient_fraction * cfg.breed_size + 0.5))


def enabled(cfg: Config) -> bool:
    return num_gradient_children(cfg) > 0


def paper_mutation(cfg: Config) -> str:
    """Mutation method for the paper's operator (``add`` when every child is a gradient child)."""
    return "add" if cfg.mutation == "gradient" else cfg.mutation


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


def improve(key: jax.Array, models: Models, latents: jax.Array, container_emb: jax.Array, *,
            steps: int, learning_rate: float, optimizer: str = "adam", k: int, rule: str = "nearest",
            prior_weight: float = 0.0, prior_bound: float = 3.0,
            chunk_size: int = 32) -> tuple[jax.Array, GradientInfo]:
    """Take ``steps`` optimiser steps on each of ``latents`` (G, C, T), maximising its surrogate
    sparseness against ``container_emb`` minus the prior penalty. Children are processed in chunks
    of ``chunk_size`` (each child's objective depends on its own latent only, so chunking changes
    nothing but memory). Returns the new latents and a :class:`GradientInfo`.
    """
    g = latents.shape[0]
    z_all = split_chunks(latents, chunk_size)  # the same batches as search.evaluate
    tx = make_optimizer(optimizer, learning_rate)
    k = min(k, container_emb.shape[0])

    def objective(z, step_key):
        audio = models.decode(models.decoder_params, z, step_key)
        emb = (models.embed_grad or models.embed)(models.embedder_params, audio).astype(jnp.float32)
        sp = surrogate_sparseness(emb, container_emb, k, rule)
        gain = sp - prior_weight * prior_penalty(z, prior_bound) if prior_weight else sp
        return -jnp.sum(gain), sp  # minimise the negative; children are independent

    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def one_chunk(args):
        i, z0 = args

        def body(carry, s):
            z, opt_state = carry
            step_key = jax.random.fold_in(jax.random.fold_in(key, s), i)
            (_, sp), grad = value_and_grad(z, step_key)
            updates, opt_state = tx.update(grad, opt_state, z)
            norm = jnp.sqrt(jnp.sum(jnp.where(jnp.isfinite(grad), grad, 0.0) ** 2, axis=(1, 2)))
            return (optax.apply_updates(z, updates), opt_state), (sp, norm)

        (z, _), (sp, norm) = jax.lax.scan(body, (z0, tx.init(z0)), jnp.arange(steps))
        return z, sp[0], sp[-1], jnp.mean(norm, axis=0)

    z, sp0, sp_last, norm = jax.lax.map(one_chunk, (jnp.arange(z_all.shape[0]), z_all))
    return merge_chunks(z, g), GradientInfo(merge_chunks(sp0, g), merge_chunks(sp_last, g), merge_chunks(norm, g))


def apply(cfg: Config, models: Models, key: jax.Array, container: jax.Array, container_emb: jax.Array,
          children: jax.Array, breeding: operators.Breeding) -> tuple[jax.Array, GradientInfo]:
    """Replace the first :func:`num_gradient_children` children by gradient children started from
    their crossover (same parents and crossover point as ``breeding``, no random mutation)."""
    g = num_gradient_children(cfg)
    start = operators.crossover(container[breeding.first_parent[:g]], container[breeding.second_parent[:g]],
                                breeding.crossover_point[:g])
    improved, info = improve(
        key, models, start, container_emb, steps=cfg.gradient_steps, learning_rate=cfg.gradient_lr,
        optimizer=cfg.gradient_optimizer, k=cfg.k, rule=cfg.sparseness_rule,
        prior_weight=cfg.gradient_prior_weight, prior_bound=cfg.gradient_prior_bound,
        chunk_size=cfg.chunk_size)
    return jnp.concatenate([improved, children[g:]]), info


def step_metrics(cfg: Config, info: GradientInfo, child_emb: jax.Array, child_ok: jax.Array,
                 container_emb: jax.Array, child_sparseness: jax.Array) -> dict[str, jax.Array]:
    """Per-generation scalars (logged to TensorBoard under ``gradient/``).

    * ``gradient_norm``: mean gradient norm (per child, mean over steps);
    * ``gradient_start_sparseness`` / ``gradient_end_sparseness``: mean sparseness of the gradient
      children against the container before / after the steps (end: the evaluated children);
      ``gradient_gain`` = end - start, the gain over their starting points;
    * ``gradient_children_sparseness``: their mean sparseness in the pool (what selection sees);
      in mixed mode also ``gradient_random_children_sparseness`` (the paper's children of the same
      generation) and ``gradient_gain_vs_random`` = gradient - random.
    """
    g = num_gradient_children(cfg)
    ok = child_ok[:g]
    end = surrogate_sparseness(child_emb[:g], container_emb, min(cfg.k, container_emb.shape[0]),
                               cfg.sparseness_rule)
    end = jnp.where(ok, end, jnp.nan)
    grad_sp = jnp.nanmean(child_sparseness[:g])
    out = {
        "gradient_norm": jnp.nanmean(info.grad_norm),
        "gradient_start_sparseness": jnp.nanmean(info.start_sparseness),
        "gradient_end_sparseness": jnp.nanmean(end),
        "gradient_gain": jnp.nanmean(end - info.start_sparseness),
        "gradient_children_sparseness": grad_sp,
    }
    if g < cfg.breed_size:
        rand_sp = jnp.nanmean(child_sparseness[g:])
        out["gradient_random_children_sparseness"] = rand_sp
        out["gradient_gain_vs_random"] = grad_sp - rand_sp
    return out
