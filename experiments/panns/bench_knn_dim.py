"""Benchmark (not a test): what switching the embedder from VGGish (128-d) to PANNs CNN14 (2048-d) costs.

Two measurements, both on this machine in one invocation, reported as ratios:

1. kNN sparseness at VCTK-experiment size: a pool of ``--container`` (500) + ``--breed`` (100)
   embeddings, ``k = --k`` (50), ``jax.jit(lambda e: lvns_jax.novelty.sparseness(e, k))`` on
   random-normal (P, 2048) vs (P, 128) float32 embeddings; compile time excluded, median of
   ``--repeats`` runs.
2. Embedding ``--clips`` (100) clips of ``--seconds`` (4 s) at ``--rate`` (44.1 kHz): PANNs
   ``jax.jit(panns.untrained(0).pure_embed(rate))`` vs VGGish
   ``jax.jit(vggish.untrained(0).pure_embed(rate))`` (params passed as arguments), in batches of
   ``--batch`` clips; compile time (the first batch) reported apart, then the median over
   ``--repeats`` passes of the whole set.

Weights are UNTRAINED (random init): the costs do not depend on the values.

    .venv/bin/python experiments/panns/bench_knn_dim.py --json experiments/panns/bench_knn_dim.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, *args, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times


def bench_knn(pool: int, k: int, dims, repeats: int) -> dict:
    from lvns_jax.novelty import sparseness

    f = jax.jit(lambda e: sparseness(e, k))
    out = {}
    rng = np.random.default_rng(0)
    for d in dims:
        emb = jnp.asarray(rng.standard_normal((pool, d)), jnp.float32)
        first, med, times = timed(f, emb, repeats=repeats)
        out[str(d)] = {"first_call_s": first, "median_s": med, "times_s": times}
    return out


def bench_embed(name: str, model, clips: np.ndarray, rate: int, batch: int, repeats: int) -> dict:
    f = jax.jit(model.pure_embed(rate))
    params = model.params
    batches = [jnp.asarray(clips[i : i + batch]) for i in range(0, len(clips), batch)]
    t0 = time.perf_counter()
    jax.block_until_ready(f(params, batches[0]))
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            out = f(params, b)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"model": name, "description": model.description, "compile_and_first_batch_s": compile_and_first,
            "median_s": med, "times_s": times, "clips_per_s": len(clips) / med,
            "embedding_size": int(out.shape[-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--container", type=int, default=500)
    p.add_argument("--breed", type=int, default=100)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rate", type=int, default=44100)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--knn-repeats", type=int, default=20)
    p.add_argument("--skip-embed", action="store_true", help="only the kNN part")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)

    pool = a.container + a.breed
    res: dict = {"config": vars(a), "pool": pool, "devices": [str(d) for d in jax.devices()],
                 "cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__}
    knn = bench_knn(pool, a.k, (128, 2048), a.knn_repeats)
    res["knn"] = knn
    res["knn_ratio_2048_over_128"] = knn["2048"]["median_s"] / knn["128"]["median_s"]
    rows = [("kNN sparseness, P=%d k=%d, 128-d" % (pool, a.k), knn["128"]["median_s"], ""),
            ("kNN sparseness, P=%d k=%d, 2048-d" % (pool, a.k), knn["2048"]["median_s"],
             "x%.2f" % res["knn_ratio_2048_over_128"])]
    if not a.skip_embed:
        from lvns_jax.models import panns, vggish

        rng = np.random.default_rng(1)
        n = int(round(a.seconds * a.rate))
        clips = (0.1 * rng.standard_normal((a.clips, n))).astype(np.float32)
        v = bench_embed("vggish", vggish.untrained(0), clips, a.rate, a.batch, a.repeats)
        pn = bench_embed("panns_cnn14", panns.untrained(0), clips, a.rate, a.batch, a.repeats)
        res["embed"] = {"vggish": v, "panns": pn}
        res["embed_ratio_panns_over_vggish"] = pn["median_s"] / v["median_s"]
        res["compile_ratio_panns_over_vggish"] = pn["compile_and_first_batch_s"] / v["compile_and_first_batch_s"]
        what = f"embed {a.clips} x {a.seconds:g} s @ {a.rate} Hz"
        rows += [(f"{what}, VGGish (128-d)", v["median_s"], ""),
                 (f"{what}, PANNs CNN14 (2048-d)", pn["median_s"], "x%.2f" % res["embed_ratio_panns_over_vggish"]),
                 ("  compile + first batch, VGGish", v["compile_and_first_batch_s"], ""),
                 ("  compile + first batch, PANNs", pn["compile_and_first_batch_s"],
                  "x%.2f" % res["compile_ratio_panns_over_vggish"])]
        # what one generation of the VCTK experiment costs: embed the breed + kNN over the pool
        per_clip = {m: res["embed"][m]["median_s"] / a.clips for m in ("vggish", "panns")}
        gen_v = a.breed * per_clip["vggish"] + knn["128"]["median_s"]
        gen_p = a.breed * per_clip["panns"] + knn["2048"]["median_s"]
        res["generation_estimate_s"] = {"vggish": gen_v, "panns": gen_p, "ratio": gen_p / gen_v}
        res["knn_share_of_generation"] = {"vggish": knn["128"]["median_s"] / gen_v,
                                          "panns": knn["2048"]["median_s"] / gen_p}
        rows += [(f"embed {a.breed} + kNN (one generation, no decode), VGGish", gen_v, ""),
                 (f"embed {a.breed} + kNN (one generation, no decode), PANNs", gen_p, "x%.2f" % (gen_p / gen_v))]
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'median s':>10}  ratio")
    for name, t, r in rows:
        print(f"{name:{w}}  {t:10.4f}  {r}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
