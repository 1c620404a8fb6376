"""Novelty: kNN sparseness in embedding space, computed in row blocks.

Two rules:

* ``nearest`` (the paper's definition, our default): mean Euclidean distance from each member to
  its k nearest OTHER members.
* ``farthest`` (what the original code computes, ``torch.topk(dist, k, largest=True)``): mean of the
  k largest distances from the member to all pool members, itself included.

Memory: the pool is processed in blocks of ``chunk`` rows; a block holds ``chunk x P`` screen scores
(one matmul), reduced to a few candidates per row (:func:`group_top_k`) before the next block, and the
square root is taken after selection. So nothing larger than ``chunk x P`` is ever materialised.

Exactness: the matmul scores only screen candidates (k + max(8, k/4) per row); the chosen ones are recomputed
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

# Automatic block size: about this many screen scores per block (26 MB of float32), so that a block
# written by the matmul is still in a 32 MB L3 cache when the screen reads it. Measured on this
# project's 2-core Zen 4 (experiments/results/bench_knn_2026-12-05.txt): 100k pool, 664-row blocks
# (2**26 scores) 72 s per generation, 64-row blocks 36 s, with the same screen.
_AUTO_BLOCK_ELEMENTS = 6_500_000
# ... but at least this many rows: fewer re-read the whole pool too often per row (a 1M pool: 64 rows).
_MIN_BLOCK_ROWS = 64


def auto_chunk(pool_size: int) -> int:
    """Rows per block: about 6.5M scores per block, at least 64 rows (and at least 1, at most P)."""
    rows = max(_MIN_BLOCK_ROWS, _AUTO_BLOCK_ELEMENTS // max(pool_size, 1))
    return int(max(1, min(pool_size, rows)))


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


#: Columns per group of the two-level screen (:func:`group_top_k`).
SCREEN_GROUP = 16

#: Screen score of invalid and padding columns. Finite and exact in bfloat16, so that a matmul split
#: into bfloat16 parts (float32 HIGHEST on TPU) cannot turn it into NaN as it would -inf.
NO_SCORE = -(2.0 ** 126)


def group_top_k(scores: jax.Array, m: int, group: int = SCREEN_GROUP) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(scores, m)`` over the last axis, the same values and indices (ties included), faster.

    The columns are cut into contiguous groups of ``group``; ``top_k`` over the group maxima picks m
    groups, and ``top_k`` over the m x ``group`` columns of those groups gives the answer. Exact: a
    group holding one of the m best columns has a maximum at least as good as the m-th best, and at
    most m groups do (each holds a distinct one of the m best), so the m best groups hold all of them;
    ``top_k`` keeps the lower index among equal values, and groups are contiguous and taken in
    ascending order, so ties resolve as in one ``top_k`` over the row. ``top_k`` costs ~1.5 ns per
    element on XLA:CPU; the group maxima are an elementwise max at memory speed. A last axis that is
    not a multiple of ``group`` leaves a tail of columns that are always candidates (after the groups:
    their indices are the highest); it is faster when it is a multiple (see :func:`screen_matrix`).
    Falls back to one ``top_k`` when the groups would not cut the work.
    """
    p = scores.shape[-1]
    n_groups = p // group
    if n_groups <= 2 * m:
        return jax.lax.top_k(scores, m)
    lead = scores.shape[:-1]
    head = scores if p % group == 0 else scores[..., :n_groups * group]
    best = jnp.max(head.reshape(*lead, n_groups, group), axis=-1)
    _, gid = jax.lax.top_k(best, m)
    gid = jnp.sort(gid, axis=-1)
    cols = (gid[..., :, None] * group + jnp.arange(group, dtype=gid.dtype)).reshape(*lead, m * group)
    if p % group:
        tail = jnp.arange(n_groups * group, p, dtype=cols.dtype)
        cols = jnp.concatenate([cols, jnp.broadcast_to(tail, (*lead, tail.shape[0]))], axis=-1)
    val, pos = jax.lax.top_k(jnp.take_along_axis(scores, cols, axis=-1), m)
    return val, jnp.take_along_axis(cols, pos, axis=-1)


def screen_matrix(pool: jax.Array, pool_sq: jax.Array, valid: jax.Array, rule: str) -> jax.Array:
    """(D + 1, P') matrix ``W`` with ``[row, 1] @ W`` = the screen score of every pool column for ``row``.

    ``nearest``: ``2 row.p - |p|^2`` (= ``|row|^2 - d^2``, larger = nearer); ``farthest``:
    ``|p|^2 - 2 row.p``. Invalid columns score :data:`NO_SCORE`. P' = P rounded up to
    :data:`SCREEN_GROUP`; the added columns score :data:`NO_SCORE` too. Build it once per pool
    (:func:`block_fn`): :func:`block_knn` runs once per row block.
    """
    if rule not in RULES:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    p = pool.shape[0]
    pad = -p % SCREEN_GROUP
    sign = 2.0 if rule == "nearest" else -2.0
    bias = jnp.where(valid, -pool_sq if rule == "nearest" else pool_sq, NO_SCORE)
    w = jnp.concatenate([sign * pool, bias[:, None]], axis=1)
    w = jnp.pad(w, ((0, pad), (0, 0)))
    w = w.at[p:, -1].set(NO_SCORE)
    return w.T


def block_knn(rows: jax.Array, row_ids: jax.Array, pool: jax.Array, pool_sq: jax.Array, valid: jax.Array,
              k: int, rule: str, approx: float = 0.0, exclude: jax.Array | None = None,
              screen: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The k neighbours of ``rows`` (c, D) in ``pool`` (P, D); ``row_ids`` are their pool indices.

    Returns squared distances (c, k) sorted (ascending for ``nearest``, descending for ``farthest``)
    and pool indices (c, k) int32. Missing neighbours (fewer than k valid) have distance +inf
    (``nearest``) or -inf (``farthest``) and index -1. Among equal distances the lower index comes first.

    Two stages: a screen (one matmul with :func:`screen_matrix`, then :func:`group_top_k`) ranks all
    P columns and keeps :func:`screen_width` candidates (+1 for ``nearest``: the row itself, dropped
    after; ``approx`` > 0: ``lax.approx_max_k`` with that recall target), then the candidates'
    distances are recomputed exactly (:func:`exact_sq_dist`) and the k best kept. The result is a
    function of the embeddings only, not of the block shape. ``exclude``: optional (c, P) mask of
    pairs that are never neighbours (an archive's copy of the row itself). ``screen``: the pool's
    :func:`screen_matrix` (built here if not given).
    """
    if rule not in RULES:
        raise ValueError(f"sparseness rule must be one of {RULES}, got {rule!r}")
    p = pool.shape[0]
    if screen is None:
        screen = screen_matrix(pool, pool_sq, valid, rule)
    scores = screen_scores(rows, screen)
    if exclude is not None:
        scores = jnp.where(jnp.pad(exclude, ((0, 0), (0, scores.shape[1] - p))), -jnp.inf, scores)
    return refine(scores, rows, row_ids, pool, k, rule, approx)


def screen_scores(rows: jax.Array, screen: jax.Array) -> jax.Array:
    """(c, P') screen scores of ``rows`` (c, D) against a pool's :func:`screen_matrix`: one matmul."""
    aug = jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
    return jnp.matmul(aug, screen, precision=jax.lax.Precision.HIGHEST)


def refine(scores: jax.Array, rows: jax.Array, row_ids: jax.Array, pool: jax.Array, k: int, rule: str,
           approx: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """The second stage of :func:`block_knn`: candidates from the screen ``scores`` (c, P'), their
    exact distances, the k best (index order among equal distances)."""
    p = pool.shape[0]
    m = min(p, screen_width(k, p) + (rule == "nearest"))
    if approx > 0:
        cand_score, cand = jax.lax.approx_max_k(scores, m, recall_target=approx)
    else:
        cand_score, cand = group_top_k(scores, m)
    cand, cand_score = jax.lax.sort((cand, cand_score), num_keys=1)  # index order: ties go to the lower index
    ok = (cand_score > NO_SCORE) & (cand < p)
    if rule == "nearest":
        ok = ok & (cand != row_ids[:, None])
    exact = exact_sq_dist(rows[:, None, :], pool[jnp.minimum(cand, p - 1)])
    if rule == "nearest":
        neg, pos = jax.lax.top_k(jnp.where(ok, -exact, -jnp.inf), k)
        picked = -neg
    else:
        picked, pos = jax.lax.top_k(jnp.where(ok, exact, -jnp.inf), k)
    idx = jnp.take_along_axis(cand, pos, axis=-1).astype(jnp.int32)
    return picked, jnp.where(jnp.isfinite(picked), idx, -1)


def block_fn(pool: jax.Array, pool_sq: jax.Array, valid: jax.Array, k: int, rule: str, approx: float = 0.0):
    """``block_knn`` over this pool as ``fn(rows, row_ids)`` (for :func:`rows_map`), screen built once."""
    return functools.partial(block_knn, pool=pool, pool_sq=pool_sq, valid=valid, k=k, rule=rule, approx=approx,
                             screen=screen_matrix(pool, pool_sq, valid, rule))


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


def finite_rows(embeddings: jax.Array) -> jax.Array:
    """The rows with no NaN or inf: the members that take part in the kNN (:func:`prepare`'s mask)."""
    return jnp.all(jnp.isfinite(jnp.asarray(embeddings, jnp.float32)), axis=-1)


def prepare(embeddings: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(pool with invalid rows zeroed, its squared norms, the validity mask): inputs of :func:`block_knn`."""
    emb = jnp.asarray(embeddings, jnp.float32)
    ok = finite_rows(emb)
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
    block = block_fn(emb, pool_sq, ok, k, rule, approx)
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
