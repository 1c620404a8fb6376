"""Time and peak memory of lvns_jax.novelty.sparseness on P x D random embeddings.

    python experiments/sparseness_100k.py [P] [D] [k]
Peak memory: run under `/usr/bin/time -v` (maximum resident set size) or read ru_maxrss below.
"""

import resource
import sys
import time

import jax
import numpy as np

from lvns_jax import novelty

p = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
d = int(sys.argv[2]) if len(sys.argv) > 2 else 128
k = int(sys.argv[3]) if len(sys.argv) > 3 else 50
emb = np.random.default_rng(0).normal(size=(p, d)).astype(np.float32)
for rule in ("nearest", "farthest"):
    t0 = time.perf_counter()
    out = jax.block_until_ready(novelty.sparseness(emb, k, rule))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(novelty.sparseness(emb, k, rule))
    second = time.perf_counter() - t0
    print(f"{rule}: P={p} D={d} k={k} chunk={novelty.auto_chunk(p)}: first call (with compile) {first:.1f} s, "
          f"second {second:.1f} s, mean sparseness {float(out.mean()):.4f}")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
