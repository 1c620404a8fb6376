"""Sparseness + selection time per generation: brute-force vs incremental kNN (not a test).

    python experiments/bench_knn.py                       # table: N = 10k, 100k; brute and incremental
    python experiments/bench_knn.py --sizes 10000,100000,1000000 --methods incremental
    python experiments/bench_knn.py --one brute 10000     # one measurement (what the table runs)
    KNN_BREED=10000 KNN_WIDTH=60 python experiments/bench_knn.py --sizes 1000000 --methods incremental --data clusters

Synthetic VGGish-sized embeddings (D = 128, N(0, 1)), k = 30, B = 1000 children per generation
(fresh N(0, 1) embeddings), rule ``nearest``, survivors = the N most sparse. One generation =
``sparseness of the pool (N + B) -> most_sparse -> next container`` (and, incremental, the update of
the kNN lists), one jitted function. The first generation (with compilation) is not timed; the
others are. Each measurement runs in its own process so that its peak RSS (``ru_maxrss``) is its own.
CPU seconds (process time, all threads) are printed next to wall seconds: on a shared machine they
move less than wall time. GFLOP/s = the distance matmuls' flops (brute: 2 P^2 D; incremental:
2 B P D plus 2 P D per recomputed row) over wall seconds, so the distance to the matmul floor shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

K, D = 30, 128
B = int(os.environ.get("KNN_BREED", 1000))  # children per generation
CLUSTER = 100  # --data clusters: members per cluster
WIDTH = int(os.environ.get("KNN_WIDTH", 0))  # incremental list width (knn_width); 0: the default for N (2k, 4k from 20k)


def clustered_lists(cont, width: int):
    """Exact lists of a container of well-separated clusters (``--data clusters``), cluster by cluster:
    O(N x CLUSTER x D) instead of a from-scratch O(N^2 D) build (hours at N = 1M on 2 cores). Exact
    because every other cluster is far beyond each member's width-th neighbour (centres ~480 apart,
    clusters ~16 across)."""
    import jax
    import jax.numpy as jnp

    from lvns_jax import knn_incremental, novelty

    if width >= CLUSTER:
        raise SystemExit(f"--data clusters builds lists inside {CLUSTER}-member clusters: set KNN_WIDTH < {CLUSTER} "
                         f"(the default for this N is {width})")
    n = cont.shape[0]
    groups = cont.reshape(n // CLUSTER, CLUSTER, D)

    def one_cluster(g):
        cand = jnp.broadcast_to(jnp.arange(CLUSTER), (CLUSTER, CLUSTER))
        d2 = novelty.exact_sq_dist(g[:, None, :], g[cand])  # the gather form of novelty.block_knn (same bits)
        d2 = jnp.where(jnp.eye(CLUSTER, dtype=bool), jnp.inf, d2)
        neg, idx = jax.lax.top_k(-d2, width)
        return -neg, idx.astype(jnp.int32)

    d2, idx = jax.lax.map(one_cluster, groups, batch_size=256)
    idx = idx + (jnp.arange(n // CLUSTER, dtype=jnp.int32) * CLUSTER)[:, None, None]
    d2, idx = d2.reshape(n, width), idx.reshape(n, width)
    return knn_incremental.KnnLists(d2=d2, idx=idx, bound=jnp.max(d2, axis=1), recomputed=jnp.int32(0))


def one(method: str, n: int, gens: int, data: str = "gauss") -> dict:
    import jax
    import jax.numpy as jnp

    from lvns_jax import knn_incremental, novelty, selection

    key = jax.random.key(0)
    if data == "clusters":  # children are mutations of random members (they stay in their cluster)
        centres = 30.0 * jax.random.normal(jax.random.fold_in(key, 10), (n // CLUSTER, D))
        cont = jnp.repeat(centres, CLUSTER, axis=0) + jax.random.normal(jax.random.fold_in(key, 0), (n, D))
    else:
        cont = jax.random.normal(jax.random.fold_in(key, 0), (n, D))

    def children(g, cont):
        k = jax.random.fold_in(key, g + 1)
        if data == "clusters":
            parents = jax.random.randint(jax.random.fold_in(k, 1), (B,), 0, n)
            return cont[parents] + 0.5 * jax.random.normal(k, (B, D))
        return jax.random.normal(k, (B, D))

    @jax.jit
    def gen_brute(cont, ch):
        pool = jnp.concatenate([cont, ch])
        sp = novelty.sparseness(pool, K, "nearest")
        surv = selection.most_sparse(sp, n)
        return pool[surv], jnp.sum(surv >= n)

    @jax.jit
    def gen_inc(cont, lists, ch):
        pool = jnp.concatenate([cont, ch])
        sp, pool_lists = knn_incremental.pool_knn(lists, pool, n, K)
        surv = selection.most_sparse(sp, n)
        return pool[surv], knn_incremental.update(pool_lists, pool, surv, K), jnp.sum(surv >= n)

    width = WIDTH or knn_incremental.default_width(K, n)
    t0 = time.perf_counter()
    build = (lambda c: clustered_lists(c, width)) if data == "clusters" else (lambda c: knn_incremental.build(c, width))
    lists = jax.block_until_ready(jax.jit(build)(cont)) if method == "incremental" else None
    build_s = time.perf_counter() - t0
    times, cpu, new, recomputed = [], [], [], []
    for g in range(gens + 1):
        ch = children(g, cont)
        t0, c0 = time.perf_counter(), time.process_time()
        if method == "brute":
            cont, nnew = jax.block_until_ready(gen_brute(cont, ch))
        else:
            cont, lists, nnew = jax.block_until_ready(gen_inc(cont, lists, ch))
            recomputed.append(int(lists.recomputed))
        if g:  # generation 0 includes compilation
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        new.append(int(nnew))
    sec = sum(times) / len(times)
    p = n + B
    if method == "brute":  # the pool's distance matmul, P x P x D multiply-adds
        flop = 2.0 * p * p * D
    else:  # children vs pool, plus the recomputed rows vs the container / pool
        flop = 2.0 * B * p * D + 2.0 * (sum(recomputed[1:]) / max(len(recomputed) - 1, 1)) * p * D
    return dict(method=method, data=data, n=n, b=B, d=D, k=K, gflop=flop / 1e9, gflops=flop / 1e9 / sec, width=width if method == "incremental" else None, gens=gens, seconds_per_gen=sec,
                cpu_seconds_per_gen=sum(cpu) / len(cpu), cpu=cpu,
                times=times, new_survivors=new, recomputed_rows=recomputed,
                build_seconds=build_s if method == "incremental" else None,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--methods", default="brute,incremental")
    ap.add_argument("--gens", type=int, default=3, help="timed generations per measurement")
    ap.add_argument("--data", default="gauss", choices=("gauss", "clusters"),
                    help="gauss: N(0, 1) container and children; clusters: 100-member clusters, children are "
                         "mutations of members (built cluster by cluster: what makes N = 1M measurable)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.gens, args.data)), flush=True)
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for method in args.methods.split(","):
            gens = args.gens if not (method == "brute" and n >= 100_000) else 1
            proc = subprocess.run([sys.executable, __file__, "--one", method, str(n), "--gens", str(gens),
                                   "--data", args.data],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(f"{method} N={n}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n| N | B | method | s/generation | CPU s/generation | distance GFLOP | GFLOP/s | peak RSS MiB | "
          f"rows recomputed/gen | brute/incremental |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["n"], r["method"]): r for r in rows}
    for r in rows:
        ratio = ""
        if r["method"] == "incremental" and (r["n"], "brute") in by:
            ratio = f"{by[(r['n'], 'brute')]['seconds_per_gen'] / r['seconds_per_gen']:.1f}x"
        rec = (f"{sum(r['recomputed_rows']) / len(r['recomputed_rows']):.0f}" if r["recomputed_rows"] else "")
        print(f"| {r['n']} | {r['b']} | {r['method']} | {r['seconds_per_gen']:.3f} | {r['cpu_seconds_per_gen']:.2f} | "
              f"{r['gflop']:.1f} | "
              f"{r['gflops']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{rec} | {ratio} |")


if __name__ == "__main__":
    main()
