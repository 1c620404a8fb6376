"""Novelty: kNN sparseness in embedding space, computed in row blocks.

Two rules:

* ``nearest`` (the paper's definition, our default): mean Euclidean distance from each member to
  its k nearest OTHER members.
* ``farthest`` (what the original code computes, ``torch.topk(dist, k, largest=True)``): mean of the
  k largest distances from the member to all pool members, itself included.

Memory: the pool is processed in blocks of ``chunk`` rows; a block holds ``chunk x P`` squared
distances (via one matmul), reduced with ``lax.top_k`` before the next block, and the square root is
taken after selection. So nothing larger than ``chunk x P`` is ever materialised.

Invalid members (``valid=False``, e.g. NaN embeddings) are never anyone's neighbour and get
sparseness ``-inf``; if fewer than k valid neighbours exist, the mean is over those that do.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

RULES = ("nearest", "farthest")

# Automatic block size: about this many distances per block (256 MB of float32).
_AUTO_BLOCK_ELEMENTS = 1 << 26


def auto_chunk(pool_size: int) -> int:
    """Rows per block so that a block holds about 2**26 distances (at least 1, at most P)."""
    return int(max(1, min(pool_size, _AUTO_BLOCK_ELEMENTS // max(pool_size, 1))))


def _block_sparseness(rows: jax.Array, row_ids: jax.Array, pool: jax.Array, pool_sq: jax.Array,
                      valid: jax.Array, k: int, rule: str) -> jax.Array:
    """Sparseness of ``rows`` (c, D) against ``pool`` (P, D); ``row_ids`` are their pool indices."""
    rows_sq = jnp.sum(rows * rows, axis=-1)
    cross = jnp.matmul(rows, pool.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(rows_sq[:, None] + pool_sq[None, :] - 2.0 * cross, 0.0)
    cols = jnp.arange(pool.shape[0])
    is_self = cols[None, :] == row_ids[:, None]
    d2 = jnp.where(is_self, 0.0, d2)  # exact zero distance to itself
    if rule == "nearest":
        excluded = is_self | ~valid[None, :]
        neg, _ = jax.lax.top_k(jnp.where(excluded, -jnp.inf, -d2), k)
        picked = -neg
    elif rule == "farthest":
        picked, _ = jax.lax.top_k(jnp.where(valid[None, :], d2, -jnp.inf), k)
    else:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    finite = jnp.isfinite(picked)
    dist = jnp.sqrt(jnp.where(finite, picked, 0.0))
    count = jnp.sum(finite, axis=-1)
    return jnp.sum(dist, axis=-1) / jnp.maximum(count, 1)


@functools.partial(jax.jit, static_argnames=("k", "rule", "chunk"))
def sparseness(embeddings: jax.Array, k: int, rule: str = "nearest", chunk: int | None = None,
               valid: jax.Array | None = None) -> jax.Array:
    """Sparseness of every row of ``embeddings`` (P, D) within the set of rows; returns (P,) float32.

    ``chunk``: rows per block (None: automatic). ``valid``: optional (P,) bool mask; invalid rows are
    excluded as neighbours and get ``-inf``. Non-finite embeddings are treated as invalid.
    """
    emb = jnp.asarray(embeddings, jnp.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (P, D), got shape {emb.shape}")
    p = emb.shape[0]
    if rule not in RULES:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    max_k = p - 1 if rule == "nearest" else p
    if not 1 <= k <= max_k:
        raise ValueError(f"k must be in [1, {max_k}] for {p} members and rule {rule!r}, got {k}")
    ok = jnp.all(jnp.isfinite(emb), axis=-1)
    if valid is not None:
        ok = ok & jnp.asarray(valid, bool)
    emb = jnp.where(ok[:, None], emb, 0.0)
    pool_sq = jnp.sum(emb * emb, axis=-1)

    c = auto_chunk(p) if chunk is None else int(max(1, min(chunk, p)))
    n_blocks = -(-p // c)
    padded = jnp.pad(emb, ((0, n_blocks * c - p), (0, 0)))
    ids = jnp.arange(n_blocks * c, dtype=jnp.int32)
    block = functools.partial(_block_sparseness, pool=emb, pool_sq=pool_sq, valid=ok, k=k, rule=rule)
    out = jax.lax.map(lambda xs: block(xs[0], xs[1]),
                      (padded.reshape(n_blocks, c, -1), ids.reshape(n_blocks, c)))
    out = out.reshape(-1)[:p]
    return jnp.where(ok, out, -jnp.inf)
