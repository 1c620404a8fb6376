"""Two values of a precision key at the VCTK size: real-size (untrained) RAVE v1 + VGGish, N 500, B 100, k 50,
3 s clips, noise on, a fixed seed. The same search runs with each value (default: the VGGish front end,
``frontend_precision = float64`` and ``float32``, with float32 models; ``--key precision --modes
float32,bfloat16``: the models' matmul precision); per generation: survivors that differ, and the largest
embedding difference of the container while the survivors are the same.

    .venv/bin/python experiments/precision/frontend_vctk.py [--generations 5] [--out experiments/precision/frontend_vctk.json]
    .venv/bin/python experiments/precision/frontend_vctk.py --key precision --modes float32,bfloat16 --generations 20 \
        --out experiments/precision/matmul_vctk.json
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
ap.add_argument("--key", default="frontend_precision", choices=("frontend_precision", "precision"))
ap.add_argument("--modes", default="float64,float32", help="the two values of --key compared "
                "(float64,float64: the run-to-run determinism control)")
ap.add_argument("overrides", nargs="*")
a = ap.parse_args()

base = dict(rave="untrained:v1", embedder="untrained:vggish", container_size=500, breed_size=100, k=50,
            latent_frames=64, progress=False, seed=0, noise=True, **config.parse_overrides(a.overrides))
modes = a.modes.split(",")
runs, seconds = {}, []
for i, prec in enumerate(modes):
    t0 = time.perf_counter()
    e = assemble(config.from_dict({**base, a.key: prec}))
    s = e.init()
    gens = [(set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())), np.asarray(s.embeddings))]
    for g in range(a.generations):
        s, _ = e.step(s)
        gens.append((set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())), np.asarray(s.embeddings)))
    runs[i] = gens
    seconds.append(time.perf_counter() - t0)
    print(f"{a.key} = {prec}: {seconds[-1]:.0f} s", flush=True)
differ, emb = [], []
for (i64, e64), (i32, e32) in zip(runs[0], runs[1]):
    differ.append(len(i64 - i32))
    emb.append(float(np.max(np.abs(e64 - e32))) if i64 == i32 else None)
out = {"config": {k: v for k, v in base.items()}, "key": a.key, "modes": modes, "generations": a.generations,
       "seconds (init + generations, compilation included)": seconds,
       "survivors_differing_per_generation (0 = initial container)": differ,
       "container_embedding_max_abs_diff_per_generation": emb,
       "embedding_scale (max abs)": float(np.max(np.abs(runs[0][-1][1])))}
print(json.dumps(out, indent=1))
if a.out:
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
