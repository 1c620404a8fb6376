"""Sparseness + selection time per generation: brute-force vs incremental kNN (not a test).

    python experiments/bench_knn.py                       # table: N = 10k, 100k; brute and incremental
    python experiments/bench_knn.py --sizes 10000,100000,1000000 --methods incremental
    python experiments/bench_knn.py --one brute 10000     # one measurement (what the table runs)

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

K, B, D = 30, 1000, 128
WIDTH = int(os.environ.get("KNN_WIDTH", 2 * K))  # incremental list width (knn_width; 2k by default)


def one(method: str, n: int, gens: int) -> dict:
    import jax
    import jax.numpy as jnp

    from lvns_jax import knn_incremental, novelty, selection

    key = jax.random.key(0)
    cont = jax.random.normal(jax.random.fold_in(key, 0), (n, D))

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

    t0 = time.perf_counter()
    lists = jax.block_until_ready(knn_incremental.build(cont, WIDTH)) if method == "incremental" else None
    build_s = time.perf_counter() - t0
    times, cpu, new, recomputed = [], [], [], []
    for g in range(gens + 1):
        ch = jax.random.normal(jax.random.fold_in(key, g + 1), (B, D))
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
    return dict(method=method, n=n, b=B, d=D, k=K, gflop=flop / 1e9, gflops=flop / 1e9 / sec, width=WIDTH if method == "incremental" else None, gens=gens, seconds_per_gen=sec,
                cpu_seconds_per_gen=sum(cpu) / len(cpu), cpu=cpu,
                times=times, new_survivors=new, recomputed_rows=recomputed,
                build_seconds=build_s if method == "incremental" else None,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--methods", default="brute,incremental")
    ap.add_argument("--gens", type=int, default=3, help="timed generations per measurement")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.gens)), flush=True)
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for method in args.methods.split(","):
            gens = args.gens if not (method == "brute" and n >= 100_000) else 1
            proc = subprocess.run([sys.executable, __file__, "--one", method, str(n), "--gens", str(gens)],
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
