"""VGGish's front end in float32 (what runs on TPU, which has no float64 FFT) vs its float64 island.

1. Embedding error on fixed clips (tones, chirps, noise; 44.1 kHz, 3 s), untrained VGGish: cosine and
   relative L2 of float32-front-end embeddings against the float64 reference, and of the log-mel.
2. Effect on selection: the same search (untrained RAVE v2_small + VGGish, noise on) with
   ``frontend_precision = float64`` and ``float32``: how many survivors differ, generation by generation.

    .venv/bin/python experiments/precision/frontend.py [--generations 20]
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config
from lvns_jax.assemble import assemble
from lvns_jax.models import vggish
from lvns_jax.models.vggish import frontend

ap = argparse.ArgumentParser()
ap.add_argument("--generations", type=int, default=20)
a = ap.parse_args()

sr, n = 44100, 3 * 44100
t = np.arange(n) / sr
rng = np.random.default_rng(0)
clips = [np.sin(2 * np.pi * f * t) * 0.5 for f in (110, 440, 3000)]
clips += [np.sin(2 * np.pi * (100 + 2000 * t) * t) * 0.5, rng.normal(size=n) * 0.1, rng.normal(size=n) * 1e-3,
          np.sign(np.sin(2 * np.pi * 220 * t)) * 0.3, (rng.normal(size=n) * np.exp(-t)) * 0.5]
x = jnp.asarray(np.stack(clips), jnp.float32)
model = vggish.untrained(seed=0)
e64 = np.asarray(jax.jit(model.pure_embed(sr, high_precision=True))(model.params, x), np.float64)
e32 = np.asarray(jax.jit(model.pure_embed(sr, high_precision=False))(model.params, x), np.float64)
m64 = np.asarray(frontend.waveform_to_examples(x, sr, high_precision=True), np.float64)
m32 = np.asarray(frontend.waveform_to_examples(x, sr, high_precision=False), np.float64)
cos = np.sum(e64 * e32, -1) / np.linalg.norm(e64, axis=-1) / np.linalg.norm(e32, axis=-1)
rel = np.linalg.norm(e64 - e32, axis=-1) / np.linalg.norm(e64, axis=-1)
rel_mel = np.linalg.norm((m64 - m32).reshape(len(clips), -1), axis=-1) / np.linalg.norm(m64.reshape(len(clips), -1), axis=-1)
out = {"clips": len(clips), "embedding_cosine_min": float(cos.min()), "embedding_rel_l2_max": float(rel.max()),
       "logmel_rel_l2_max": float(rel_mel.max())}

base = dict(rave="untrained:v2_small", embedder="untrained:vggish", container_size=16, breed_size=8, k=5,
            latent_channels=8, latent_frames=96, chunk_size=8, progress=False, seed=1, noise=True)
runs = {}
for prec in ("float64", "float32"):
    e = assemble(config.from_dict({**base, "frontend_precision": prec}))
    s = e.init()
    ids = []
    for g in range(a.generations):
        s, _ = e.step(s)
        ids.append(set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())))
    runs[prec] = ids
differ = [len(x - y) for x, y in zip(runs["float64"], runs["float32"])]
out.update(generations=a.generations, container_size=16, survivors_differing_per_generation=differ,
           first_generation_with_a_difference=next((g + 1 for g, d in enumerate(differ) if d), None))
print(json.dumps(out, indent=1))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "frontend.json"), "w") as f:
    json.dump(out, f, indent=1)
