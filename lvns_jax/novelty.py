"""Novelty: kNN sparseness in embedding space, computed in row blocks.

Two rules:

* ``nearest`` (the paper's definition, our default): mean Euclidean distance from each member to
  its k nearest OTHER members.
* ``farthest`` (what the original code computes, ``torch.topk(dist, k, largest=True)``): mean of the
  k largest distances from the member to all pool members, itself included.

Memory: the pool is processed in blocks of ``chunk`` rows; a block holds ``chunk x P`` squared
distances (via one matmul), reduced with ``lax.top_k`` before the next block, and the square root is
taken after selection. So nothing larger than ``chunk x P`` is ever materialised.

Exactness: the matmul distances only screen candidates (k + max(8, k/4) per row); the chosen ones are recomputed
as ``sum((a - b)**2)`` with a fixed summation order (:func:`exact_sq_dist`), so a member's sparseness
is the same to the last bit whatever the block size, the device count (:mod:`lvns_jax.distributed`)
or the kNN algorithm (:mod:`lvns_jax.knn_incremental`).

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


def tree_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis in a fixed pairwise order, made of elementwise adds only.

    Unlike ``jnp.sum`` (whose reduction order, and so its last bits, depends on the array's shape and
    on how XLA vectorises it), the result for one row depends only on that row's values. This is what
    makes sparseness bit-identical across chunk sizes, device counts and the incremental kNN path.
    """
    d = x.shape[-1]
    width = 1 << max(d - 1, 0).bit_length()
    if width != d:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - d)])
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def exact_sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distance ``sum((a - b)**2)`` over the last axis (broadcasting), shape-independent.

    Symmetric bit for bit (``exact_sq_dist(a, b) == exact_sq_dist(b, a)``) and free of the
    cancellation of the matmul expansion; used to refine the few candidates a matmul screen picks.
    """
    diff = a - b
    return tree_sum(diff * diff)


def screen_width(k: int, columns: int) -> int:
    """Candidates kept by the matmul screen before exact refinement: k + max(8, k/4), capped.

    The spare candidates only have to absorb the matmul's rounding (a true k-nearest member is lost
    only if more than that many others sit within rounding error of the k-th distance; exact
    duplicates have equal exact distances, so which of them is kept does not matter). ``top_k``'s
    cost grows with its width, so the margin is kept small.
    """
    return int(min(columns, k + max(8, k // 4)))


def mean_sqrt(picked: jax.Array) -> jax.Array:
    """Mean of ``sqrt`` over the finite entries of sorted squared-distance lists (..., k)."""
    finite = jnp.isfinite(picked)
    dist = jnp.sqrt(jnp.where(finite, picked, 0.0))
    count = jnp.sum(finite, axis=-1)
    return tree_sum(dist) / jnp.maximum(count, 1).astype(dist.dtype)


def block_knn(rows: jax.Array, row_ids: jax.Array, pool: jax.Array, pool_sq: jax.Array, valid: jax.Array,
              k: int, rule: str, approx: float = 0.0, exclude: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The k neighbours of ``rows`` (c, D) in ``pool`` (P, D); ``row_ids`` are their pool indices.

    Returns squared distances (c, k) sorted (ascending for ``nearest``, descending for ``farthest``)
    and pool indices (c, k) int32. Missing neighbours (fewer than k valid) have distance +inf
    (``nearest``) or -inf (``farthest``) and index -1.

    Two stages: a matmul screen ranks all P columns and keeps :func:`screen_width` candidates
    (``approx`` > 0: ``lax.approx_min_k``/``approx_max_k`` with that recall target), then the
    candidates' distances are recomputed exactly (:func:`exact_sq_dist`) and the k best kept. The
    result is a function of the embeddings only, not of the block shape. ``exclude``: optional
    (c, P) mask of pairs that are never neighbours (an archive's copy of the row itself).
    """
    rows_sq = jnp.sum(rows * rows, axis=-1)
    cross = jnp.matmul(rows, pool.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(rows_sq[:, None] + pool_sq[None, :] - 2.0 * cross, 0.0)
    cols = jnp.arange(pool.shape[0])
    is_self = cols[None, :] == row_ids[:, None]
    d2 = jnp.where(is_self, 0.0, d2)  # exact zero distance to itself
    m = screen_width(k, pool.shape[0])
    if rule == "nearest":
        scores = jnp.where(is_self | ~valid[None, :], -jnp.inf, -d2)
    elif rule == "farthest":
        scores = jnp.where(valid[None, :], d2, -jnp.inf)
    else:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    if exclude is not None:
        scores = jnp.where(exclude, -jnp.inf, scores)
    if approx > 0:
        cand_score, cand = jax.lax.approx_max_k(scores, m, recall_target=approx)
    else:
        cand_score, cand = jax.lax.top_k(scores, m)
    exact = exact_sq_dist(rows[:, None, :], pool[cand])
    ok = jnp.isfinite(cand_score)
    if rule == "nearest":
        neg, pos = jax.lax.top_k(jnp.where(ok, -exact, -jnp.inf), k)
        picked = -neg
    else:
        picked, pos = jax.lax.top_k(jnp.where(ok, exact, -jnp.inf), k)
    idx = jnp.take_along_axis(cand, pos, axis=-1).astype(jnp.int32)
    return picked, jnp.where(jnp.isfinite(picked), idx, -1)


def merge_lists(a: jax.Array, b: jax.Array, k: int, rule: str) -> jax.Array:
    """The k best of two sorted squared-distance lists (..., ka) and (..., kb): ascending for ``nearest``
    (+inf = none), descending for ``farthest`` (-inf = none). Ties keep ``a``'s entries first."""
    both = jnp.concatenate([a, b], axis=-1)
    if rule == "nearest":
        return -jax.lax.top_k(-both, k)[0]
    return jax.lax.top_k(both, k)[0]


def _block_sparseness(rows: jax.Array, row_ids: jax.Array, pool: jax.Array, pool_sq: jax.Array,
                      valid: jax.Array, k: int, rule: str, approx: float = 0.0) -> jax.Array:
    """Sparseness of ``rows`` (c, D) against ``pool`` (P, D); ``row_ids`` are their pool indices."""
    picked, _ = block_knn(rows, row_ids, pool, pool_sq, valid, k, rule, approx)
    return mean_sqrt(picked)


def prepare(embeddings: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(pool with invalid rows zeroed, its squared norms, the validity mask): inputs of :func:`block_knn`."""
    emb = jnp.asarray(embeddings, jnp.float32)
    ok = jnp.all(jnp.isfinite(emb), axis=-1)
    if valid is not None:
        ok = ok & jnp.asarray(valid, bool)
    emb = jnp.where(ok[:, None], emb, 0.0)
    return emb, jnp.sum(emb * emb, axis=-1), ok


def rows_map(fn, rows: jax.Array, row_ids: jax.Array, chunk: int):
    """Apply ``fn(rows_block, ids_block)`` over blocks of ``chunk`` rows (``lax.map``); outputs (R, ...)."""
    r = rows.shape[0]
    c = int(max(1, min(chunk, r)))
    n_blocks = -(-r // c)
    pad = n_blocks * c - r
    padded = jnp.pad(rows, ((0, pad), (0, 0)))
    ids = jnp.pad(row_ids, (0, pad), constant_values=-1)
    out = jax.lax.map(lambda xs: fn(xs[0], xs[1]), (padded.reshape(n_blocks, c, -1), ids.reshape(n_blocks, c)))
    return jax.tree_util.tree_map(lambda o: o.reshape(n_blocks * c, *o.shape[2:])[:r], out)


def knn_lists(embeddings: jax.Array, k: int, rule: str = "nearest", chunk: int | None = None,
              valid: jax.Array | None = None, approx: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Each row's k neighbours' squared distances (P, k) (sorted as :func:`block_knn`) and the (P,)
    validity mask; :func:`sparseness` is ``mean_sqrt`` of them (``-inf`` where invalid)."""
    emb = jnp.asarray(embeddings, jnp.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (P, D), got shape {emb.shape}")
    p = emb.shape[0]
    if rule not in RULES:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    max_k = p - 1 if rule == "nearest" else p
    if not 1 <= k <= max_k:
        raise ValueError(f"k must be in [1, {max_k}] for {p} members and rule {rule!r}, got {k}")
    emb, pool_sq, ok = prepare(emb, valid)
    c = auto_chunk(p) if chunk is None else int(max(1, min(chunk, p)))
    block = functools.partial(block_knn, pool=emb, pool_sq=pool_sq, valid=ok, k=k, rule=rule, approx=approx)
    picked, _ = rows_map(block, emb, jnp.arange(p, dtype=jnp.int32), c)
    return picked, ok


@functools.partial(jax.jit, static_argnames=("k", "rule", "chunk", "approx"))
def sparseness(embeddings: jax.Array, k: int, rule: str = "nearest", chunk: int | None = None,
               valid: jax.Array | None = None, approx: float = 0.0) -> jax.Array:
    """Sparseness of every row of ``embeddings`` (P, D) within the set of rows; returns (P,) float32.

    ``chunk``: rows per block (None: automatic). ``valid``: optional (P,) bool mask; invalid rows are
    excluded as neighbours and get ``-inf``. Non-finite embeddings are treated as invalid.
    ``approx``: 0 (default) = exact; in (0, 1) = recall target of an approximate screen
    (``lax.approx_max_k``, fast on TPU; exact fallback elsewhere).
    """
    picked, ok = knn_lists(embeddings, k, rule, chunk, valid, approx)
    return jnp.where(ok, mean_sqrt(picked), -jnp.inf)
