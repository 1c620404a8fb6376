"""Decode and embed throughput against the batch (chunk) size at the VCTK size (RAVE v1 + VGGish,
untrained real-size, 3 s clips), interleaved rounds, min over rounds (the CPU is shared).

    .venv/bin/python experiments/speed/chunks.py [--sizes 5,10,25,50] [--rounds 3] [--what decode,embed]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config, individuals
from lvns_jax.assemble import assemble

ap = argparse.ArgumentParser()
ap.add_argument("--sizes", default="5,10,25,50")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--what", default="decode,embed")
ap.add_argument("overrides", nargs="*")
a = ap.parse_args()

cfg = config.from_dict({**config.parse_overrides(a.overrides), "progress": False})
eng = assemble(cfg)
m = eng.models
sizes = [int(s) for s in a.sizes.split(",")]
B = max(sizes)
z = jax.random.uniform(jax.random.key(0), (B, cfg.latent_channels, cfg.latent_frames), jnp.float32, -1, 1)
keys = jax.random.split(jax.random.key(1), B)
dec = jax.jit(lambda m, z, k: individuals.decode_each(m, z, k))
emb = jax.jit(lambda m, x: m.embed(m.embedder_params, x))
audio = dec(m, z, keys)
fns = {}
for c in sizes:
    if "decode" in a.what:
        fns[f"decode/{c}"] = (dec, (m, z[:c], keys[:c]), c)
    if "embed" in a.what:
        fns[f"embed/{c}"] = (emb, (m, audio[:c]), c)
ref = {}
for k, (f, args, c) in fns.items():
    ref[k] = np.asarray(f(*args))
ts = {k: [] for k in fns}
for _ in range(a.rounds):
    for k, (f, args, c) in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts[k].append(time.perf_counter() - t0)
for what in ("decode", "embed"):
    base = None
    for c in sizes:
        k = f"{what}/{c}"
        if k not in ts:
            continue
        same = None
        if base is not None:  # the same individuals in a bigger batch: how far do results move?
            same = float(np.abs(ref[k][: base.shape[0]] - base).max())
        else:
            base = ref[k]
        print(json.dumps({"what": what, "chunk": c, "min_s_per_individual": round(min(ts[k]) / c, 4),
                          "max_abs_diff_vs_smallest_chunk": same}), flush=True)
