"""VGGish's layers one by one at the VCTK chunk (25 clips x 3 examples = 75 examples), conv variants
interleaved (same process, round-robin), min over rounds of the process CPU seconds (all threads; one
core's float32 peak is ~118 GFLOP/s on this Zen 4, so GFLOP per CPU-second / 118 is the efficiency):

* ``nhwc``: lax.conv_general_dilated NHWC/HWIO (what flax nn.Conv does);
* ``nchw``: NCHW/OIHW;
* ``im2col``: the 9 shifted copies concatenated on channels, one (N*H*W, 9*Cin) @ (9*Cin, Cout) matmul.

    .venv/bin/python experiments/speed/profile_vgg_layers.py [--n 75] [--rounds 5]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=75)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--variants", default="nhwc,nchw,im2col")
a = ap.parse_args()
HI = lax.Precision.HIGHEST
LAYERS = [("conv1", 96, 64, 1, 64), ("conv2", 48, 32, 64, 128), ("conv3_1", 24, 16, 128, 256),
          ("conv3_2", 24, 16, 256, 256), ("conv4_1", 12, 8, 256, 512), ("conv4_2", 12, 8, 512, 512)]


def conv_nhwc(x, w):
    return jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HI))


def conv_nchw(x, w):
    return jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=HI))


def conv_im2col(x, w):
    n, h, ww, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + ww, :] for i in range(3) for j in range(3)], axis=-1)
    return jax.nn.relu(jnp.einsum("nhwk,ko->nhwo", cols, w.reshape(9 * c, -1), precision=HI))


rng = np.random.default_rng(0)
rows = {}
for name, h, w_, cin, cout in LAYERS:
    x = jnp.asarray(rng.normal(size=(a.n, h, w_, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * np.sqrt(2 / 9 / cin), jnp.float32)
    flops = 2.0 * a.n * h * w_ * cin * cout * 9
    fns = {}
    for v in a.variants.split(","):
        if v == "nhwc":
            fns[v] = (jax.jit(conv_nhwc), (x, w))
        elif v == "nchw":
            fns[v] = (jax.jit(conv_nchw), (jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))))
        elif v == "im2col":
            fns[v] = (jax.jit(conv_im2col), (x, w))
    ref = np.asarray(fns["nhwc"][0](*fns["nhwc"][1])) if "nhwc" in fns else None
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    ts = {v: [] for v in fns}
    for _ in range(a.rounds):
        for v, (f, args) in fns.items():
            t0 = time.process_time()  # CPU seconds of the process (all threads): robust to other jobs
            jax.block_until_ready(f(*args))
            ts[v].append(time.process_time() - t0)
    row = {"layer": name, "gflop": round(flops / 1e9, 2)}
    for v in fns:
        best = min(ts[v])  # min: the least disturbed call (the CPU is shared)
        row[v] = {"cpu_s": round(best, 4), "gflops_per_cpu_s": round(flops / 1e9 / best, 1)}
    rows[name] = row
    print(json.dumps(row), flush=True)
