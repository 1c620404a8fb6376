"""Incremental exact kNN for the ``nearest`` sparseness rule (``knn = "incremental"``).

The brute-force path (:func:`lvns_jax.novelty.sparseness`) recomputes all ``(N+B)^2`` pool distances
every generation: O((N+B)^2 D). This path keeps, for every container member, its L nearest other
members (exact squared distances, ascending, and their container indices; L = ``knn_width``, by
default 2k below 20,000 members and 4k from there (:func:`default_width`), L = k is the plain
algorithm) in the search state (:class:`KnnLists`), and per generation computes only

1. one pass over the children against the whole pool (B x (N+B) matmul distances, computed once):
   each child's own L nearest, and the container rows whose list the child enters (closer than the
   row's ``bound``, see 3). Those few pairs (about L per child) are refined exactly, grouped by
   row (one sort of the pairs) and merged into the rows' sorted lists by rank (comparisons and one
   scatter; no per-row sort or ``top_k`` over the container, which XLA:CPU does slowly row by row).
   The k nearest of ``container + children`` are among a row's list and its new children, so the
   pool's sparseness costs O(B (N+B) D). Caps on pairs per child (hubs: in high dimension a few
   points are near very many rows; they get a second, wider pass) and per row keep shapes static;
   beyond them a row's bound is lowered, and a row left with fewer than k reliable entries is
   recomputed against the whole pool, so the caps change the work, never the result;
3. after selection, a survivor keeps its list minus the members that were dropped (remapped to the
   new container's indices): the list held its nearest in the pool, a superset of the new
   container, so what remains are its nearest survivors. Each row carries a ``bound``: every member
   not in its list is at least that far, so the entries up to the bound are exact. A row is
   recomputed against the new container exactly when fewer than k such entries survived (with
   L = k: when its list lost a member), in blocks of rows inside a ``lax.while_loop``, so the cost
   follows the number of such rows. The L - k spare entries make that rare. (Compaction of the
   kept entries is a running count and a scatter, not a sort.)

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
#: Pairs of a generation sorted by row without the entries that are no pair, if there are at most
#: this many times L B of them (a child enters about L lists on average); more: all entries are sorted.
PAIRS_SORTED = 2


@struct.dataclass
class KnnLists:
    """Each container member's nearest other members, in lists of width L >= k."""

    d2: jax.Array  # (N, L) float32 exact squared distances, ascending; +inf where no entry
    idx: jax.Array  # (N, L) int32 container indices of those neighbours; -1 where none
    bound: jax.Array  # (N,) float32: every member NOT in the row's list is at squared distance >= bound
    recomputed: jax.Array  # int32 scalar: rows recomputed from scratch at the last update


#: Containers from this size on get lists of 4k by default (:func:`default_width`).
WIDE_FROM = 20_000


def default_width(k: int, n: int = 0) -> int:
    """List width L when ``knn_width = 0``, for a container of ``n``: 2k (k spare neighbours before a
    row must be recomputed) below :data:`WIDE_FROM` members, 4k from there. The members that die are
    the densest, hubs that sit in very many lists, so 2k spare entries run out within a few
    generations; at N = 30k and 100k (B = 1000, D 128, k 30, 10 generations) 4k took 1.37 and 1.93 s
    per generation against 1.89 and 3.63 s for 2k, at N = 10k 1.46 s against 0.99 s
    (``experiments/results/bench_knn_2026-12-06.txt``). The width changes the work, never a result."""
    return 4 * k if n >= WIDE_FROM else 2 * k


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
    block = novelty.block_fn(pool, pool_sq, valid, kk, "nearest")
    d2, idx = novelty.rows_map(block, rows, row_ids, chunk)
    return _pad_to(d2, idx, width)


@functools.partial(jax.jit, static_argnames=("width", "chunk"))
def build(embeddings: jax.Array, width: int, chunk: int | None = None) -> KnnLists:
    """Exact lists of a container from scratch: O(N^2 D), done once (at init and after a restore)."""
    pool, pool_sq, ok = novelty.prepare(embeddings)
    n = pool.shape[0]
    d2, idx = _lists_of(pool, jnp.arange(n, dtype=jnp.int32), pool, pool_sq, ok, width, _chunk(chunk, n))
    return KnnLists(d2=d2, idx=idx, bound=_last(d2), recomputed=jnp.int32(n))


#: Relative bound on the rounding error of a matmul distance ``|a|^2 + |b|^2 - 2 a.b`` in float32
#: (D = 128: worst case ~1.6e-5 (|a|^2 + |b|^2) for recursive summation; pairwise is far smaller).
#: Only decides which pairs are refined exactly: a larger value costs work, never changes a result.
TOL = 3e-5


_TINY = float(jnp.finfo(jnp.float32).tiny)
#: Stands in for an infinite bound in the margin's matmul form (finite: no inf - inf there).
_FINITE = 2.0 ** 100


def _tol(sq_a: jax.Array, sq_b: jax.Array) -> jax.Array:
    return TOL * (sq_a + sq_b) + _TINY


def reverse_width(width: int, n: int) -> int:
    """Container rows a child may enter per generation before the overflow rule applies: 4L (>= 64)."""
    return int(min(n, max(4 * width, 64)))


def pair_tiers(c: int, n: int, rev: int) -> list[tuple[int, int]]:
    """(children, width) per tier of the pairs a block of ``c`` children takes (:func:`_children_pass`):
    every child up to ``rev / 4`` container rows, the first ~3c/8 with more up to ``rev``, the first
    ~c/8 of those with more still (hubs) up to ``8 rev``. ``top_k``'s cost grows with its width, and
    most children enter few lists (at N 100k, D 128: median 14, 80 % under 64, 6 % over 240)."""
    tiers, r, w = [], c, max(1, rev // 4)
    for r_next, w_next in ((max(8, 3 * c // 8), rev), (max(8, c // 8), 8 * rev), (0, 0)):
        tiers.append((r, min(w, n)))
        if w >= n:
            break
        r, w = int(max(1, min(r, r_next))), w_next
    return tiers


def slot_width(width: int, n: int, b: int) -> int:
    """New children a container row takes per generation before its bound is lowered: ~4x the mean."""
    return int(max(1, min(b, max(8, -(-4 * width * b // max(n, 1))))))


def merge_sorted(a_d2, a_idx, e_d2, e_idx, width: int):
    """First ``width`` entries of the merge of two ascending lists per row (ties: ``a`` first), and the
    value of the first entry that did not fit (+inf if none): (d2, idx, first dropped). No sort: each
    entry's merged position is its rank, counted by comparisons, and the lists are scattered there."""
    la, lw = a_d2.shape[-1], e_d2.shape[-1]
    rank_a = jnp.arange(la) + jnp.sum(e_d2[:, None, :] < a_d2[:, :, None], axis=-1)
    rank_e = jnp.arange(lw) + jnp.sum(a_d2[:, None, :] <= e_d2[:, :, None], axis=-1)
    rows = jnp.arange(a_d2.shape[0])[:, None]
    ranks = jnp.concatenate([rank_a, rank_e], axis=1)
    d2 = jnp.zeros((a_d2.shape[0], la + lw), a_d2.dtype).at[rows, ranks].set(
        jnp.concatenate([a_d2, e_d2], axis=1), unique_indices=True)
    idx = jnp.zeros((a_d2.shape[0], la + lw), a_idx.dtype).at[rows, ranks].set(
        jnp.concatenate([a_idx, e_idx], axis=1), unique_indices=True)
    dropped = d2[:, width] if la + lw > width else jnp.full(a_d2.shape[:1], jnp.inf, a_d2.dtype)
    return d2[:, :width], idx[:, :width], dropped


def _last(d2: jax.Array) -> jax.Array:
    """The last entry of ascending lists, as a reduction: XLA:CPU turns ``top_k(...)[0][:, -1]`` into
    a full sort of the row (20x slower than top_k, measured at 1,000 x 10,000, k 240)."""
    return jnp.max(d2, axis=-1)


def _min_rows(x: jax.Array) -> jax.Array:
    """``min(x, axis=0)`` of a (c, n) array by halving: contiguous elementwise minima (XLA:CPU's
    column reduction walks memory with stride n: 3-4x slower, measured at 1,000 x 10,000)."""
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        head = jnp.minimum(x[:h], x[h:2 * h])
        x = jnp.concatenate([head, x[2 * h:]]) if x.shape[0] % 2 else head
    return x[0]


def _children_pass(pool, pool_sq, ok, n: int, thr: jax.Array, width: int, rev: int, chunk: int,
                   children: jax.Array | None = None):
    """One pass over the children (pool rows ``n:``) in blocks, each block against the whole pool.

    Per child: its ``width`` nearest in the pool (screened by matmul, refined exactly), and the
    container rows whose list it enters (matmul distance < the row's bound ``thr`` + rounding margin;
    those pairs refined exactly and kept if < bound), the largest margins first, capped in tiers
    (:func:`pair_tiers`: ``rev / 4`` for every child, ``rev`` for the first children of a block with
    more, ``8 rev`` for the first hubs among those: in high dimension a few points are near very many
    rows); the rows beyond what a child got have their bound lowered to a lower estimate of the
    distance (matmul distance minus the rounding margin). One matmul per block serves both.
    ``children``: the pool indices of the children to do (default all; a device does its share).
    Returns own (B, L) d2 / idx, the pairs (flat rows, d2 (+inf: no pair), children's pool indices),
    the lowered bounds (N,) and which children are hubs (B,).
    """
    p = pool.shape[0]
    if children is None:
        children = jnp.arange(n, p, dtype=jnp.int32)
    b = children.shape[0]
    c = int(max(1, min(chunk, b)))
    n_blocks = -(-b // c)
    kk = min(width, p)
    ids_all = jnp.pad(children, (0, n_blocks * c - b), constant_values=-1)
    tiers = pair_tiers(c, n, rev)
    # One matmul per block gives both the screen of the child's own nearest (novelty.screen_matrix:
    # 2 x.p - |p|^2) and, plus a column term and a row term, the margin of every container row
    #   thr + tol - d2 = (2 x.p - |p|^2 + thr + TOL |p|^2) + ((TOL - 1) |x|^2 + tiny).
    # Only the column term is added to the whole block; the row term does not change a row's order,
    # so it is added to the picked values (and inside ``lower``, in the same order of operations).
    screen = novelty.screen_matrix(pool, pool_sq, ok, "nearest")
    cols = jnp.where(ok[:n], jnp.minimum(thr, _FINITE) + TOL * pool_sq[:n], novelty.NO_SCORE)
    col_term = jnp.pad(cols, (0, screen.shape[1] - n), constant_values=novelty.NO_SCORE)

    def block(low, ids):
        safe = jnp.maximum(ids, 0)
        rows = pool[safe]
        row_ok = (ids >= 0) & ok[safe]
        row_term = jnp.where(row_ok, (TOL - 1.0) * pool_sq[safe] + _TINY, -jnp.inf)
        scores = novelty.screen_scores(rows, screen)
        own_d2, own_idx = novelty.refine(scores, rows, ids, pool, kk, "nearest")
        # container rows whose list the child enters (margin > 0), the largest margins first, in
        # tiers: every child gets up to w0; the first r1 children with more get up to w1; ...
        part = scores + col_term[None, :]
        cut = jnp.full((c,), -jnp.inf)
        sel, sel_ok, prev_w, out = None, row_ok, 0, []
        for t, (r_t, w_t) in enumerate(tiers):
            if t:  # the first r_t children of the previous tier that had more than its width
                pick = jnp.nonzero(over, size=r_t, fill_value=over.shape[0])[0]
                sel_ok = pick < over.shape[0]
                sel = sel[jnp.minimum(pick, over.shape[0] - 1)] if t > 1 else jnp.minimum(pick, c - 1)
            at = (lambda x: x) if sel is None else (lambda x: x[sel])
            av, mi = novelty.group_top_k(at(part), w_t)
            mv = jnp.where(sel_ok[:, None], av + at(row_term)[:, None], -jnp.inf)
            mi = jnp.minimum(mi, n - 1)  # columns past the container have margin < 0: no pair
            ex = novelty.exact_sq_dist(at(rows)[:, None, :], pool[mi])
            # the first prev_w entries are the ones the child got in the tier before (same order)
            fresh = jnp.arange(w_t) >= prev_w
            out.append((mi, jnp.where(fresh & (mv > 0) & (ex < thr[mi]), ex, jnp.inf),
                        jnp.where(sel_ok, at(ids), -1)))
            last = jnp.min(mv, axis=-1)  # mv[:, -1]; a slice of top_k's values makes XLA:CPU sort the row
            over = last > 0
            cut_t = jnp.where(over, last, -jnp.inf)
            cut = cut_t if sel is None else cut.at[jnp.where(sel_ok, sel, c)].set(cut_t, mode="drop")
            prev_w = w_t

        def lower(low):
            # rows a child did not get (margin <= its last taken margin) get a lower bound
            margin = part[:, :n] + row_term[:, None]
            hit = (margin > 0) & (margin <= cut[:, None])
            # thr - margin = matmul distance - rounding margin: a lower estimate of the distance (a row
            # with no finite bound gets -inf: it is recomputed)
            est = jnp.where(jnp.isfinite(thr)[None, :], thr[None, :] - margin, -jnp.inf)
            return jnp.minimum(low, _min_rows(jnp.where(hit, est, jnp.inf)))

        low = jax.lax.cond(jnp.any(cut > -jnp.inf), lower, lambda x: x, low)
        return low, (own_d2, own_idx, cut, tuple(out))

    low, (own_d2, own_idx, cut, out) = jax.lax.scan(block, jnp.full((n,), jnp.inf, jnp.float32),
                                                    ids_all.reshape(n_blocks, c))
    own_d2, own_idx, cut = (o.reshape(n_blocks * c, *o.shape[2:])[:b] for o in (own_d2, own_idx, cut))
    pairs = []
    for mi, d2, child in out:
        child = jnp.broadcast_to(child[..., None], mi.shape)
        pairs.append((mi.ravel(), d2.ravel(), child.ravel()))
    pairs = tuple(jnp.concatenate(x) for x in zip(*pairs))
    return _pad_to(own_d2, own_idx, width) + (pairs, low, cut > -jnp.inf)


def _slots(pairs, n: int, w: int, cap: int | None = None):
    """Each container row's new entries from the pairs ``(row, d2, child)`` (flat; d2 +inf: no pair),
    ascending (N, w) d2 / pool idx, and the first pair that did not fit (N,) (+inf if none).

    Most of the flat entries are no pair (at N 100k, B 1000: ~15 % are pairs, about L per child):
    when at most ``cap`` are, they are gathered first and only those sorted; else all are sorted.
    Both ways give the same arrays (the entries that are no pair sort last and are dropped)."""
    rows, d2, child = pairs
    total = d2.shape[0]
    is_pair = jnp.isfinite(d2)

    def every_entry(_):
        return _slots_sorted(jnp.where(is_pair, rows, n), d2, child, n, w)

    if cap is None or cap >= total:
        return every_entry(None)

    def pairs_only(_):
        at = jnp.nonzero(is_pair, size=cap, fill_value=total)[0]
        got = at < total
        at = jnp.minimum(at, total - 1)
        return _slots_sorted(jnp.where(got, rows[at], n), jnp.where(got, d2[at], jnp.inf),
                             jnp.where(got, child[at], -1), n, w)

    return jax.lax.cond(jnp.sum(is_pair) <= cap, pairs_only, every_entry, None)


def _slots_sorted(rows, d2, child, n: int, w: int):
    """:func:`_slots` on pairs whose row is ``n`` where there is no pair."""
    rows, d2, child = jax.lax.sort((rows, d2, child), num_keys=3)
    pos = jnp.arange(rows.shape[0])
    start = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.array([True]), rows[1:] != rows[:-1]]), pos, 0))
    rank = pos - start
    slot_d2 = jnp.full((n + 1, w), jnp.inf, jnp.float32).at[rows, rank].set(d2, mode="drop")
    slot_idx = jnp.full((n + 1, w), -1, jnp.int32).at[rows, rank].set(child, mode="drop")
    first_out = jnp.full((n + 1,), jnp.inf, jnp.float32).at[jnp.where(rank == w, rows, n)].min(d2)
    return slot_d2[:n], slot_idx[:n], first_out[:n]


def _recompute(need, d2, idx, bound, inputs, width: int, block_rows: int):
    """Rows ``need`` (R,) of the lists recomputed exactly, ``block_rows`` at a time. ``inputs()`` gives
    ``(rows_emb, row_ids, pool, pool_sq, ok)``: it runs (and the pool's screen matrix is built) only
    when some row needs it, inside a ``lax.cond`` (at 100k, ~40-70 ms saved per call without one)."""
    r_total = need.shape[0]
    count = jnp.sum(need, dtype=jnp.int32)
    r = int(max(1, min(r_total, block_rows)))
    n_blocks = -(-r_total // r)

    def run(lists):
        rows_emb, row_ids, pool, pool_sq, ok = inputs()
        order = jnp.nonzero(need, size=n_blocks * r, fill_value=r_total)[0].astype(jnp.int32)
        block = novelty.block_fn(pool, pool_sq, ok, min(width, pool.shape[0]), "nearest")

        def body(carry):
            i, d2, idx, bound = carry
            sel = jax.lax.dynamic_slice(order, (i * r,), (r,))
            safe = jnp.minimum(sel, r_total - 1)
            bd2, bidx = _pad_to(*block(rows_emb[safe], row_ids[safe]), width)
            return (i + 1, d2.at[sel].set(bd2, mode="drop"), idx.at[sel].set(bidx, mode="drop"),
                    bound.at[sel].set(jnp.max(bd2, axis=-1), mode="drop"))  # the last entry (see _last)

        return jax.lax.while_loop(lambda c: c[0] * r < count, body, (jnp.int32(0), *lists))[1:]

    d2, idx, bound = jax.lax.cond(count > 0, run, lambda lists: lists, (d2, idx, bound))
    return d2, idx, bound, count


def _children_pass_sharded(mesh, pool, pool_sq, ok, n: int, thr, width: int, rev: int, chunk: int):
    """:func:`_children_pass` with the children split over the mesh's devices: each device does its
    share against the whole pool (held by every device, as the brute-force path does); per device
    the traffic is its children's results, O(B/devices x (L + pairs)), and one pmin of the (N,)
    lowered bounds."""
    from jax.sharding import PartitionSpec as P

    from lvns_jax.distributed import AXIS

    p = pool.shape[0]

    def body(children, pool, pool_sq, ok, thr):
        own_d2, own_idx, pairs, low, hub = _children_pass(pool, pool_sq, ok, n, thr, width, rev, chunk, children)
        return own_d2, own_idx, pairs, jax.lax.pmin(low, AXIS), hub

    spec = P(AXIS)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, P(), P(), P(), P()),
                         out_specs=(spec, spec, (spec, spec, spec), P(), spec), check_vma=False)(
        jnp.arange(n, p, dtype=jnp.int32), pool, pool_sq, ok, thr)


def pool_knn(lists: KnnLists, pool_emb: jax.Array, n: int, k: int, chunk: int | None = None,
             rev: int | None = None, slots: int | None = None, mesh=None):
    """Sparseness (``nearest`` rule) of the pool ``container (first n rows) + children``.

    Returns ``(sparseness (P,), (d2 (P, L), idx (P, L) pool indices, bound (P,), rows recomputed))``:
    the same sparseness as ``novelty.sparseness(pool_emb, k, "nearest")``, from O(B (N+B) D) work.
    In every row the entries at squared distance <= bound are the row's nearest pool members; there
    are at least k of them (or the row lists every valid member).

    One pass over the children computes the B x (N+B) matmul distances once; from them each child
    gets its own list, and each container row the children closer than its bound (its list's
    reliable part): those few pairs are refined exactly and merged into the row's list without
    sorting. ``rev`` / ``slots`` (None: :func:`reverse_width` / :func:`slot_width`) cap the pairs per
    child and per row; beyond them bounds are lowered, and a row left with fewer than k reliable
    entries is recomputed against the whole pool. The caps change the work, never the result.
    ``mesh``: the children's pass is split over its devices (:func:`_children_pass_sharded`); the
    merge into the container rows is elementwise per row and follows the rows' sharding.
    """
    pool, pool_sq, ok = novelty.prepare(pool_emb)
    p = pool.shape[0]
    b = p - n
    width = lists.d2.shape[1]
    rev = reverse_width(width, n) if rev is None else int(min(rev, n))
    w = slot_width(width, n, b) if slots is None else int(max(1, min(slots, b)))
    d = 1 if mesh is None else mesh.shape["pop"]
    if d == 1 or b % d:
        ch_d2, ch_idx, pairs, low, hub = _children_pass(pool, pool_sq, ok, n, lists.bound, width, rev, _chunk(chunk, p))
    else:
        ch_d2, ch_idx, pairs, low, hub = _children_pass_sharded(mesh, pool, pool_sq, ok, n, lists.bound, width, rev,
                                                                _chunk(chunk, p))
    slot_d2, slot_idx, slot_out = _slots(pairs, n, w, cap=PAIRS_SORTED * width * b)
    co_d2, co_idx, dropped = merge_sorted(lists.d2, lists.idx, slot_d2, slot_idx, width)
    # members not in a row's merged list: unknown to the stored list (>= its bound), children that
    # were no pair (>= the bound), beyond a child's cap (>= low), beyond the row's slots (>= slot_out),
    # or entries that fell off the end (>= dropped)
    carry_bound = jnp.minimum(lists.bound, jnp.minimum(slot_out, dropped))  # all but the hubs' lowering
    co_bound = jnp.minimum(carry_bound, low)
    reliable = jnp.sum(co_d2 <= co_bound[:, None], axis=1)
    need = (reliable < k) & jnp.isfinite(co_bound) & ok[:n]
    # recomputed rows are exact in the whole pool; the others carry their bound without the hubs'
    # lowering, which the update re-applies for the hubs that survive (most do not: hubs are the least
    # sparse), so that a dead hub does not make a row's list look shorter than it is
    co_bound = jnp.where(need, co_bound, carry_bound)
    low = jnp.where(need, jnp.inf, low)
    co_d2, co_idx, co_bound, count = _recompute(
        need, co_d2, co_idx, co_bound, lambda: (pool[:n], jnp.arange(n, dtype=jnp.int32), pool, pool_sq, ok),
        width, _chunk(chunk, p) if chunk else RECOMPUTE_BLOCK)
    d2 = jnp.concatenate([co_d2, ch_d2])
    idx = jnp.concatenate([co_idx, ch_idx])
    bound = jnp.concatenate([co_bound, _last(ch_d2)])
    sp = jnp.where(ok, novelty.mean_sqrt(d2[:, :k]), -jnp.inf)
    return sp, (d2, idx, bound, count, hub, low, lists.bound)


#: Surviving hubs whose rows are re-checked one by one in the update (more: the pool pass's bounds).
HUB_CHECK = 16


def _hub_bounds(hub_info, pool_emb, survivors, old_idx, bound):
    """Bounds of the survivors' lists, lowered for the children that survived and were not given to
    every container row whose bound they fell under (see :func:`_children_pass`).

    Up to :data:`HUB_CHECK` such children: each row from the container whose list lacks the child
    while its matmul distance minus the rounding margin is under the row's old bound gets that
    lower estimate as its bound (a superset of the rows the pool pass lowered: safe whatever the
    last bits of the matmul). More of them: the pool pass's lowered bounds are used as they are.
    """
    hub, low, thr = hub_info
    p = pool_emb.shape[0]
    n_old = thr.shape[0]
    from_cont = survivors < n_old
    surv_hub = (survivors >= n_old) & hub[jnp.clip(survivors - n_old, 0, hub.shape[0] - 1)]
    many = jnp.sum(surv_hub) > HUB_CHECK

    def all_low(bound):
        return jnp.where(from_cont, jnp.minimum(bound, low[jnp.minimum(survivors, n_old - 1)]), bound)

    def each(bound):
        pool, pool_sq, _ = novelty.prepare(pool_emb)
        h = jnp.nonzero(surv_hub, size=HUB_CHECK, fill_value=survivors.shape[0])[0]
        hvalid = h < survivors.shape[0]
        hp = survivors[jnp.minimum(h, survivors.shape[0] - 1)]  # the hubs' pool indices
        rows = jnp.minimum(survivors, p - 1)
        cross = jnp.matmul(pool[rows], pool[hp].T, precision=jax.lax.Precision.HIGHEST)
        d2 = jnp.maximum(pool_sq[rows][:, None] + pool_sq[hp][None, :] - 2.0 * cross, 0.0)
        est = d2 - _tol(pool_sq[rows][:, None], pool_sq[hp][None, :])
        member = jnp.any(old_idx[:, :, None] == hp[None, None, :], axis=1)
        old_thr = thr[jnp.minimum(survivors, n_old - 1)]
        hit = hvalid[None, :] & from_cont[:, None] & ~member & (est < old_thr[:, None])
        return jnp.minimum(bound, jnp.min(jnp.where(hit, est, jnp.inf), axis=1))

    if HUB_CHECK < 1:
        return all_low(bound)
    return jax.lax.cond(many, all_low, lambda b: jax.lax.cond(jnp.any(surv_hub), each, lambda x: x, b), bound)


def update(pool_lists: tuple[jax.Array, jax.Array, jax.Array], pool_emb: jax.Array, survivors: jax.Array, k: int,
           chunk: int | None = None) -> KnnLists:
    """Lists of the next container ``pool[survivors]`` from the pool's lists (see the module doc).

    A survivor keeps its list, minus the members that did not survive, if at least k of the entries
    it can rely on (squared distance <= bound) survived, or if its list holds every valid member;
    exactly the other rows are recomputed against the new container.
    """
    pool_d2, pool_idx, pool_bound = pool_lists[:3]
    earlier = pool_lists[3] if len(pool_lists) > 3 else jnp.int32(0)
    p, width = pool_d2.shape
    n = survivors.shape[0]
    new_pos = jnp.full((p,), -1, jnp.int32).at[survivors].set(jnp.arange(n, dtype=jnp.int32))
    d2, old, bound = pool_d2[survivors], pool_idx[survivors], pool_bound[survivors]
    if len(pool_lists) > 4:
        bound = _hub_bounds(pool_lists[4:], pool_emb, survivors, old, bound)
    idx = jnp.where(old >= 0, new_pos[jnp.maximum(old, 0)], -1)
    kept = idx >= 0
    reliable = jnp.sum(kept & (d2 <= bound[:, None]), axis=1)
    # kept entries first, still ascending: each entry's new position is a running count (no sort)
    # kept entries up to and including each column (an associative scan: XLA:CPU lowers jnp.cumsum
    # to a reduce_window of width L, O(L^2) per row: 88 against 53 ms at 100k x 120)
    before = jax.lax.associative_scan(jnp.add, kept.astype(jnp.int32), axis=1)
    n_kept = before[:, -1:]
    new_col = jnp.where(kept, before - 1, n_kept + jnp.arange(width, dtype=jnp.int32) - before)
    rows = jnp.arange(n)[:, None]
    d2 = jnp.zeros_like(d2).at[rows, new_col].set(jnp.where(kept, d2, jnp.inf), unique_indices=True)
    idx = jnp.zeros_like(idx).at[rows, new_col].set(jnp.where(kept, idx, -1), unique_indices=True)
    ok = novelty.finite_rows(pool_emb)[survivors]  # prepare's mask, without gathering the embeddings

    def inputs():
        cont, cont_sq, cont_ok = novelty.prepare(pool_emb[survivors])
        return cont, jnp.arange(n, dtype=jnp.int32), cont, cont_sq, cont_ok

    need = (reliable < k) & jnp.isfinite(bound) & ok
    d2, idx, bound, count = _recompute(need, d2, idx, bound, inputs, width, chunk or RECOMPUTE_BLOCK)
    return KnnLists(d2=d2, idx=idx, bound=bound, recomputed=count + earlier)

