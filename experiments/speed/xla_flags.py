"""One VCTK chunk (25 individuals, RAVE v1 + VGGish, untrained real-size, 3 s) decoded and embedded under
the XLA_FLAGS of this process: min over rounds of wall and process-CPU seconds, and whether the outputs
are bitwise those of a reference run (``--save`` writes them, ``--compare`` reads them).

    XLA_FLAGS=... .venv/bin/python experiments/speed/xla_flags.py [--save ref.npz | --compare ref.npz]
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config, individuals
from lvns_jax.assemble import assemble

ap = argparse.ArgumentParser()
ap.add_argument("--chunk", type=int, default=25)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--save", default="")
ap.add_argument("--compare", default="")
ap.add_argument("overrides", nargs="*")
a = ap.parse_args()

cfg = config.from_dict({**config.parse_overrides(a.overrides), "progress": False})
eng = assemble(cfg)
m = eng.models
c = a.chunk
z = jax.random.uniform(jax.random.key(0), (c, cfg.latent_channels, cfg.latent_frames), jnp.float32, -1, 1)
keys = jax.random.split(jax.random.key(1), c)
dec = jax.jit(lambda m, z, k: individuals.decode_each(m, z, k))
emb = jax.jit(lambda m, x: m.embed(m.embedder_params, x))
audio = dec(m, z, keys)
e = emb(m, audio)
res = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
for name, f, args in (("decode", dec, (m, z, keys)), ("embed", emb, (m, audio))):
    w, cp = [], []
    for _ in range(a.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(f(*args))
        w.append(time.perf_counter() - t0)
        cp.append(time.process_time() - c0)
    res[name] = {"min_wall_s": round(min(w), 3), "min_cpu_s": round(min(cp), 3)}
if a.save:
    np.savez(a.save, audio=np.asarray(audio), emb=np.asarray(e))
if a.compare:
    r = np.load(a.compare)
    res["audio_bitwise_equal"] = bool(np.array_equal(r["audio"], np.asarray(audio)))
    res["emb_bitwise_equal"] = bool(np.array_equal(r["emb"], np.asarray(e)))
    res["audio_max_abs_diff"] = float(np.abs(r["audio"] - np.asarray(audio)).max())
    res["emb_max_abs_diff"] = float(np.abs(r["emb"] - np.asarray(e)).max())
print(json.dumps(res), flush=True)
