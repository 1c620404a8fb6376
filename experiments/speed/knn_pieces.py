"""Pieces of one incremental kNN generation (issue 15), each jitted alone, min of 3 calls: the children's
pass, slots, merge, the whole pool_knn, most_sparse and update, at N members (N(0, 1), D 128, k 30,
B 1000, first generation: no recomputed rows) with list width W.

    .venv/bin/python experiments/speed/knn_pieces.py 100000 120
"""
import sys, time, jax, jax.numpy as jnp, numpy as np
from lvns_jax import knn_incremental as ki, novelty, selection
n, B, D, K = int(sys.argv[1]), 1000, 128, 30
W = int(sys.argv[2])
key = jax.random.key(0)
cont = jax.random.normal(jax.random.fold_in(key, 0), (n, D))
ch = jax.random.normal(jax.random.fold_in(key, 1), (B, D))
t0 = time.perf_counter()
lists = jax.block_until_ready(ki.build(cont, W)); print("build", time.perf_counter() - t0, flush=True)
pool = jnp.concatenate([cont, ch])
p = n + B
rev = ki.reverse_width(W, n); w = ki.slot_width(W, n, B); chunk = novelty.auto_chunk(p)
print("rev", rev, "slots", w, "chunk", chunk, "tiers", ki.pair_tiers(min(chunk, B), n, rev))
def tm(name, f, *a):
    f = jax.jit(f); r = jax.block_until_ready(f(*a)); ts = []
    for _ in range(3):
        t0 = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t0)
    print(f"{name:12s} {min(ts)*1e3:8.1f} ms", flush=True); return r
def cp(pool, bound):
    pl, sq, ok = novelty.prepare(pool)
    return ki._children_pass(pl, sq, ok, n, bound, W, rev, chunk)
ch_d2, ch_idx, pairs, low, hub = tm("children", cp, pool, lists.bound)
sd, si, so = tm("slots", lambda pr: ki._slots(pr, n, w, ki.PAIRS_SORTED * W * B), pairs)
tm("merge", lambda a, b, c, d: ki.merge_sorted(a, b, c, d, W), lists.d2, lists.idx, sd, si)
sp, aux = tm("pool_knn", lambda l, pool: ki.pool_knn(l, pool, n, K), lists, pool)
surv = tm("most_sparse", lambda s: selection.most_sparse(s, n), sp)
tm("update", lambda a, pool, s: ki.update(a, pool, s, K), aux, pool, surv)
print("recomputed in pool_knn", int(aux[3]))
