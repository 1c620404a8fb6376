"""Incremental exact kNN for the ``nearest`` sparseness rule (``knn = "incremental"``).

The brute-force path (:func:`lvns_jax.novelty.sparseness`) recomputes all ``(N+B)^2`` pool distances
every generation: O((N+B)^2 D). This path keeps, for every container member, its L nearest other
members (exact squared distances, ascending, and their container indices; L = ``knn_width``, by
default 2k, L = k is the plain algorithm) in the search state (:class:`KnnLists`), and per
generation computes only

1. children vs the whole pool (B x (N+B) distances): the children's k nearest, and
2. container vs children (N x B): merged with each member's stored list, its k nearest in the pool
   (the k nearest of ``container + children`` are among the k nearest of the container and the
   children), so the pool's sparseness costs O(B (N+B) D);
3. after selection, a survivor keeps its list minus the members that were dropped (remapped to the
   new container's indices): the list held its nearest in the pool, a superset of the new
   container, so what remains are its nearest survivors. Each row carries a ``bound``: every member
   not in its list is at least that far, so the entries up to the bound are exact. A row is
   recomputed against the new container exactly when fewer than k such entries survived (with
   L = k: when its list lost a member), in blocks of rows inside a ``lax.while_loop``, so the cost
   follows the number of such rows. The L - k spare entries make that rare.

Every distance in a list is the exact, shape-independent ``sum((a - b)**2)`` of
:func:`lvns_jax.novelty.exact_sq_dist` (candidates are screened by matmul, then refined), the same
values the brute-force path averages; the pool's sparseness, and so the survivors, are the same to
the last bit (tested over many generations with duplicate embeddings and NaN children).

Only valid for ``sparseness_rule = "nearest"`` (the ``farthest`` rule's lists change with every
far-away newcomer) and ``reevaluate_container = false`` (re-embedding moves every member);
the ``incremental`` scorer's builder (:mod:`lvns_jax.scoring`) says so.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from lvns_jax import novelty

# Rows recomputed per block after selection (at most; fewer for a small container).
RECOMPUTE_BLOCK = 256


@struct.dataclass
class KnnLists:
    """Each container member's nearest other members, in lists of width L >= k."""

    d2: jax.Array  # (N, L) float32 exact squared distances, ascending; +inf where no entry
    idx: jax.Array  # (N, L) int32 container indices of those neighbours; -1 where none
    bound: jax.Array  # (N,) float32: every member NOT in the row's list is at squared distance >= bound
    recomputed: jax.Array  # int32 scalar: rows recomputed from scratch at the last update


def default_width(k: int) -> int:
    """List width L when ``knn_width = 0``: 2k (k spare neighbours before a row must be recomputed)."""
    return 2 * k


def _chunk(chunk: int | None, rows: int) -> int:
    return int(chunk) if chunk else novelty.auto_chunk(rows)


def _pad_to(d2: jax.Array, idx: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    extra = width - d2.shape[-1]
    if extra <= 0:
        return d2, idx
    return (jnp.pad(d2, ((0, 0), (0, extra)), constant_values=jnp.inf),
            jnp.pad(idx, ((0, 0), (0, extra)), constant_values=-1))


def _lists_of(rows: jax.Array, row_ids: jax.Array, pool: jax.Array, pool_sq: jax.Array, valid: jax.Array,
              width: int, chunk: int) -> tuple[jax.Array, jax.Array]:
    """``width`` nearest (excluding self and invalid members) of ``rows`` in ``pool``, +inf padded."""
    kk = min(width, pool.shape[0])
    block = functools.partial(novelty.block_knn, pool=pool, pool_sq=pool_sq, valid=valid, k=kk, rule="nearest")
    d2, idx = novelty.rows_map(block, rows, row_ids, chunk)
    return _pad_to(d2, idx, width)


@functools.partial(jax.jit, static_argnames=("width", "chunk"))
def build(embeddings: jax.Array, width: int, chunk: int | None = None) -> KnnLists:
    """Exact lists of a container from scratch: O(N^2 D), done once (at init and after a restore)."""
    pool, pool_sq, ok = novelty.prepare(embeddings)
    n = pool.shape[0]
    d2, idx = _lists_of(pool, jnp.arange(n, dtype=jnp.int32), pool, pool_sq, ok, width, _chunk(chunk, n))
    return KnnLists(d2=d2, idx=idx, bound=d2[:, -1], recomputed=jnp.int32(n))


def pool_knn(lists: KnnLists, pool_emb: jax.Array, n: int, k: int, chunk: int | None = None):
    """Sparseness (``nearest`` rule) of the pool ``container (first n rows) + children``.

    Returns ``(sparseness (P,), (d2 (P, L), idx (P, L) pool indices, bound (P,)))``: the same
    sparseness as ``novelty.sparseness(pool_emb, k, "nearest")``, from O(B (N+B) D) work. In every
    row the entries at squared distance <= bound are the row's nearest pool members; there are at
    least k of them (or the row lists every valid member).
    """
    pool, pool_sq, ok = novelty.prepare(pool_emb)
    p = pool.shape[0]
    b = p - n
    width = lists.d2.shape[1]
    c = _chunk(chunk, p)
    # 1. children vs the whole pool
    ch_d2, ch_idx = _lists_of(pool[n:], jnp.arange(n, p, dtype=jnp.int32), pool, pool_sq, ok, width, c)
    # 2. container vs children (no container row is a child: ids -1), merged with the stored lists
    kc = min(width, b)
    block = functools.partial(novelty.block_knn, pool=pool[n:], pool_sq=pool_sq[n:], valid=ok[n:], k=kc,
                              rule="nearest")
    new_d2, new_idx = novelty.rows_map(block, pool[:n], jnp.full((n,), -1, jnp.int32), c)
    child_bound = new_d2[:, -1] if b > kc else jnp.full((n,), jnp.inf)  # children left out are >= this
    new_idx = jnp.where(new_idx >= 0, new_idx + n, -1)
    neg, pos = jax.lax.top_k(-jnp.concatenate([lists.d2, new_d2], axis=1), width)
    co_idx = jnp.take_along_axis(jnp.concatenate([lists.idx, new_idx], axis=1), pos, axis=1)
    d2 = jnp.concatenate([-neg, ch_d2])
    idx = jnp.concatenate([co_idx, ch_idx])
    # members not in a merged list: unknown to the stored list (>= its bound), children left out of the
    # candidates (>= child_bound), or candidates that fell off the end (>= the last merged entry)
    co_bound = jnp.minimum(jnp.minimum(lists.bound, child_bound), -neg[:, -1])
    bound = jnp.concatenate([co_bound, ch_d2[:, -1]])
    sp = jnp.where(ok, novelty.mean_sqrt(d2[:, :k]), -jnp.inf)
    return sp, (d2, idx, bound)


def update(pool_lists: tuple[jax.Array, jax.Array, jax.Array], pool_emb: jax.Array, survivors: jax.Array, k: int,
           chunk: int | None = None) -> KnnLists:
    """Lists of the next container ``pool[survivors]`` from the pool's lists (see the module doc).

    A survivor keeps its list, minus the members that did not survive, if at least k of the entries
    it can rely on (squared distance <= bound) survived, or if its list holds every valid member;
    exactly the other rows are recomputed against the new container.
    """
    pool_d2, pool_idx, pool_bound = pool_lists
    p, width = pool_d2.shape
    n = survivors.shape[0]
    new_pos = jnp.full((p,), -1, jnp.int32).at[survivors].set(jnp.arange(n, dtype=jnp.int32))
    d2, old, bound = pool_d2[survivors], pool_idx[survivors], pool_bound[survivors]
    idx = jnp.where(old >= 0, new_pos[jnp.maximum(old, 0)], -1)
    kept = idx >= 0
    reliable = jnp.sum(kept & (d2 <= bound[:, None]), axis=1)
    order = jnp.argsort(~kept, axis=1, stable=True)  # kept entries first, still ascending
    kept_s = jnp.take_along_axis(kept, order, axis=1)
    d2 = jnp.where(kept_s, jnp.take_along_axis(d2, order, axis=1), jnp.inf)
    idx = jnp.where(kept_s, jnp.take_along_axis(idx, order, axis=1), -1)
    cont, cont_sq, ok = novelty.prepare(pool_emb[survivors])
    need = (reliable < k) & jnp.isfinite(bound) & ok
    count = jnp.sum(need, dtype=jnp.int32)

    r = int(min(n, chunk or RECOMPUTE_BLOCK))
    n_blocks = -(-n // r)
    rows_order = jnp.nonzero(need, size=n_blocks * r, fill_value=n)[0].astype(jnp.int32)
    kk = min(width, n)
    block = functools.partial(novelty.block_knn, pool=cont, pool_sq=cont_sq, valid=ok, k=kk, rule="nearest")

    def body(carry):
        i, d2, idx, bound = carry
        rows = jax.lax.dynamic_slice(rows_order, (i * r,), (r,))
        bd2, bidx = _pad_to(*block(cont[jnp.minimum(rows, n - 1)], rows), width)
        return (i + 1, d2.at[rows].set(bd2, mode="drop"), idx.at[rows].set(bidx, mode="drop"),
                bound.at[rows].set(bd2[:, -1], mode="drop"))

    _, d2, idx, bound = jax.lax.while_loop(lambda c: c[0] * r < count, body, (jnp.int32(0), d2, idx, bound))
    return KnnLists(d2=d2, idx=idx, bound=bound, recomputed=count)

