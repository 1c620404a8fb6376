"""Same run on any device count and chunk size, decoder noise on: the table of issue 12.

Runs 4 generations for every (devices, chunk_size) pair on 8 forced CPU devices and compares each
with 1 device / the first chunk size: identical survivors (birth generation and slot of every
member, in order), max |latent difference|, max relative sparseness difference.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python experiments/determinism/devices_chunks.py
    ... --real   (untrained real-size RAVE v2_small + VGGish, smaller grid)
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

from lvns_jax import config
from lvns_jax.assemble import assemble

ap = argparse.ArgumentParser()
ap.add_argument("--real", action="store_true")
a = ap.parse_args()
if a.real:
    base = dict(rave="untrained:v2_small", embedder="untrained:vggish", container_size=8, breed_size=4, k=3,
                latent_channels=8, latent_frames=96)
    devices, chunks = (1, 2, 4), (1, 3)
else:
    base = dict(rave="toy", embedder="toy", container_size=32, breed_size=16, k=5, latent_channels=3, latent_frames=8)
    devices, chunks = (1, 2, 4, 8), (1, 7, 32)
base.update(progress=False, noise=True, seed=3)
ref, rows = None, []
for d in devices:
    for c in chunks:
        e = assemble(config.from_dict({**base, "devices": d, "chunk_size": c}))
        s, m = e.run_block(e.init(), 4)
        got = {f: np.asarray(getattr(s, f)) for f in ("latents", "sparseness", "born", "slot")}
        if ref is None:
            ref = got
        same = bool(np.array_equal(got["born"], ref["born"]) and np.array_equal(got["slot"], ref["slot"]))
        rows.append(dict(devices=d, chunk_size=c, shards=len(s.latents.sharding.device_set), same_survivors=same,
                         max_latent_diff=float(np.abs(got["latents"] - ref["latents"]).max()),
                         max_sparseness_rel_diff=float(np.abs(got["sparseness"] / ref["sparseness"] - 1).max()),
                         children_survived=int(np.sum(got["born"] > 0))))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
print(f"models: {base['rave']} + {base['embedder']}, N {base['container_size']}, B {base['breed_size']}, noise on, 4 generations")
print("| devices | chunk_size | same survivors | max abs latent diff | max rel sparseness diff |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['devices']} | {r['chunk_size']} | {'yes' if r['same_survivors'] else 'NO'} | {r['max_latent_diff']:.1e} | "
          f"{r['max_sparseness_rel_diff']:.1e} |")
