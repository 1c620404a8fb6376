"""The float32 VGGish front end against the float64 island at the VCTK size: real-size (untrained) RAVE v1 +
VGGish, N 500, B 100, k 50, 3 s clips, float32 models, noise on, a fixed seed. The same search runs with
``frontend_precision = float64`` and ``float32``; per generation: survivors that differ, and the largest
embedding difference of the container.

    .venv/bin/python experiments/precision/frontend_vctk.py [--generations 5] [--out experiments/precision/frontend_vctk.json]
"""

import argparse
import json
import time

import numpy as np

from lvns_jax import config
from lvns_jax.assemble import assemble

ap = argparse.ArgumentParser()
ap.add_argument("--generations", type=int, default=5)
ap.add_argument("--out", default="")
ap.add_argument("--modes", default="float64,float32", help="the two frontend_precision values compared "
                "(float64,float64: the run-to-run determinism control)")
ap.add_argument("overrides", nargs="*")
a = ap.parse_args()

base = dict(rave="untrained:v1", embedder="untrained:vggish", container_size=500, breed_size=100, k=50,
            latent_frames=64, progress=False, seed=0, noise=True, **config.parse_overrides(a.overrides))
modes = a.modes.split(",")
runs = {}
for i, prec in enumerate(modes):
    t0 = time.perf_counter()
    e = assemble(config.from_dict({**base, "frontend_precision": prec}))
    s = e.init()
    gens = [(set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())), np.asarray(s.embeddings))]
    for g in range(a.generations):
        s, _ = e.step(s)
        gens.append((set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())), np.asarray(s.embeddings)))
    runs[i] = gens
    print(f"{prec}: {time.perf_counter() - t0:.0f} s", flush=True)
differ, emb = [], []
for (i64, e64), (i32, e32) in zip(runs[0], runs[1]):
    differ.append(len(i64 - i32))
    emb.append(float(np.max(np.abs(e64 - e32))) if i64 == i32 else None)
out = {"config": {k: v for k, v in base.items()}, "modes": modes, "generations": a.generations,
       "survivors_differing_per_generation (0 = initial container)": differ,
       "container_embedding_max_abs_diff_per_generation": emb,
       "embedding_scale (max abs)": float(np.max(np.abs(runs[0][-1][1])))}
print(json.dumps(out, indent=1))
if a.out:
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
