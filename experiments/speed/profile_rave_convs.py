"""RAVE v1's residual convolutions (k = 3, dilations 1/3/5) at the VCTK chunk (25 individuals, T = 64):
lax.conv_general_dilated (NWC/WIO, what the decoder runs) against one matmul x @ [W_0 W_1 W_2]
(N = 3 C) followed by a shifted three-way add, interleaved rounds, min over rounds of the process' CPU seconds (all threads; robust to other jobs on
the machine; divide by the core count for an ideal wall time).

    .venv/bin/python experiments/speed/profile_rave_convs.py [--b 25] [--rounds 5]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ap = argparse.ArgumentParser()
ap.add_argument("--b", type=int, default=25)
ap.add_argument("--rounds", type=int, default=5)
a = ap.parse_args()
LEVELS = [(512, 256), (256, 1024), (128, 4096), (64, 8192)]  # (channels, length)


def conv(x, w, d):
    return lax.conv_general_dilated(x, w, (1,), [(d, d)], rhs_dilation=(d,), dimension_numbers=("NWC", "WIO", "NWC"))


def mm_shift(x, w, d):
    b, n, c = x.shape
    k, _, co = w.shape
    p = jnp.einsum("bnc,ck->bnk", x, jnp.transpose(w, (1, 0, 2)).reshape(c, k * co))  # (b, n, 3 co)
    p = jnp.pad(p, ((0, 0), (d, d), (0, 0)))
    return p[:, 0:n, :co] + p[:, d:d + n, co:2 * co] + p[:, 2 * d:2 * d + n, 2 * co:]


def im2col(x, w, d):
    b, n, c = x.shape
    xp = jnp.pad(x, ((0, 0), (d, d), (0, 0)))
    cols = jnp.concatenate([xp[:, i * d:i * d + n] for i in range(3)], axis=-1)  # (b, n, 3c)
    return jnp.einsum("bnk,ko->bno", cols, w.reshape(3 * c, -1))


rng = np.random.default_rng(0)
for c, n in LEVELS:
    for d in (1, 3):
        x = jnp.asarray(rng.normal(size=(a.b, n, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, c, c)) / np.sqrt(3 * c), jnp.float32)
        fl = 2.0 * a.b * n * 3 * c * c
        fns = {"conv": jax.jit(lambda x, w, d=d: conv(jnp.where(x >= 0, x, 0.2 * x), w, d)),
               "mm_shift": jax.jit(lambda x, w, d=d: mm_shift(jnp.where(x >= 0, x, 0.2 * x), w, d)),
               "im2col": jax.jit(lambda x, w, d=d: im2col(jnp.where(x >= 0, x, 0.2 * x), w, d))}
        outs = {k: np.asarray(f(x, w)) for k, f in fns.items()}
        diff = max(float(np.abs(outs["conv"] - o).max()) for o in outs.values())
        ts = {k: [] for k in fns}
        for _ in range(a.rounds):
            for k, f in fns.items():
                t0 = time.process_time()  # CPU seconds of this process (all threads): robust to other jobs
                jax.block_until_ready(f(x, w))
                ts[k].append(time.process_time() - t0)
        print(json.dumps({"channels": c, "length": n, "dilation": d, "gflop": round(fl / 1e9, 2), "max_abs_diff": diff,
                          **{k: {"cpu_s": round(min(v), 4), "gflops_per_cpu_s": round(fl / 1e9 / min(v), 1)} for k, v in ts.items()}}),
              flush=True)
