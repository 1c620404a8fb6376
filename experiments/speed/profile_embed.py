"""Where the VGGish embed stage's time goes at the VCTK size (one chunk of 25 clips of 3 s at 44.1 kHz).

Each piece jitted on its own, median of --repeats calls, with XLA's flop count and GFLOP/s:
resample (44.1 -> 16 kHz), log-mel (float64 island / float32 FFT / float32 windowed-DFT matmul), the
VGG network on the examples, and the whole embed per front end. Rounds are interleaved; min over rounds
of wall and of process CPU seconds (all threads; the CPU is shared with other jobs).

    .venv/bin/python experiments/speed/profile_embed.py [--chunk 25] [--repeats 5]
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.models import vggish
from lvns_jax.models.vggish import frontend, model as vmodel

ap = argparse.ArgumentParser()
ap.add_argument("--chunk", type=int, default=25)
ap.add_argument("--samples", type=int, default=64 * 2048)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--only", default="")
a = ap.parse_args()

sr = 44100
x = jnp.asarray(np.random.default_rng(0).normal(size=(a.chunk, a.samples)) * 0.1, jnp.float32)
m = vggish.untrained(0)
x16 = jax.jit(lambda v: frontend.resample(v, sr))(x)
n_ex = frontend.num_examples(a.samples, sr)


PIECES = {}


def bench(name, f, *args):
    if a.only and a.only not in name:
        return
    jf = jax.jit(f)
    c = jf.lower(*args).compile().cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    jax.block_until_ready(jf(*args))
    PIECES[name] = (jf, args, float(c.get("flops", 0.0)))


ex = frontend.examples_from_16k(x16)
F = n_ex * frontend.EXAMPLE_FRAMES
idx = np.arange(F)[:, None] * frontend.STFT_HOP + np.arange(frontend.STFT_WINDOW)[None, :]
bench("resample", lambda v: frontend.resample(v, sr), x)
bench("logmel_float64_island", lambda v: frontend.log_mel(v, F, high_precision=True), x16)
bench("logmel_float32_fft (frontend_precision = float32)", lambda v: frontend.log_mel(v, F, high_precision=False), x16)


def dft_matrix():
    """(400, 512): periodic Hann x real DFT of the 512-point FFT, columns [Re X_0..X_256, Im X_1..X_255]."""
    n = np.arange(frontend.STFT_WINDOW)[:, None]
    ang_re = 2 * np.pi / 512 * ((n * np.arange(257)[None]) % 512)
    ang_im = 2 * np.pi / 512 * ((n * np.arange(1, 256)[None]) % 512)
    w = frontend.periodic_hann()[:, None]
    return np.concatenate([w * np.cos(ang_re), -w * np.sin(ang_im)], 1).astype(np.float32)


def logmel_dft(v):
    spec = jnp.matmul(v[..., idx], jnp.asarray(dft_matrix()), precision=jax.lax.Precision.HIGHEST)
    re, im = spec[..., :257], jnp.pad(spec[..., 257:], ((0, 0), (0, 0), (1, 1)))
    mel = jnp.matmul(jnp.sqrt(re * re + im * im), jnp.asarray(frontend.mel_matrix(), jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(mel + frontend.LOG_OFFSET)


bench("logmel_float32_dft_matmul (not used: slower on CPU)", logmel_dft, x16)
bench("vgg_net", lambda p, e: vmodel.embed_examples(p, e), m.params, ex)
for hp in (True, False):
    bench(f"embed_{'float64' if hp else 'float32'}", m.pure_embed(sr, high_precision=hp), m.params, x)

# interleaved rounds; min over rounds (the least disturbed call: the CPU is shared)
ts = {k: [] for k in PIECES}
cpu = {k: [] for k in PIECES}
for _ in range(a.repeats):
    for k, (jf, args, _) in PIECES.items():
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(jf(*args))
        ts[k].append(time.perf_counter() - t0)
        cpu[k].append(time.process_time() - c0)
for k, (_, _, fl) in PIECES.items():
    best = min(ts[k])
    print(json.dumps({"piece": k, "chunk": a.chunk, "min_s": round(best, 4), "median_s": round(statistics.median(ts[k]), 4),
                      "min_cpu_s": round(min(cpu[k]), 4),
                      "gflop": round(fl / 1e9, 3), "gflops_per_s": round(fl / 1e9 / best, 1)}), flush=True)
