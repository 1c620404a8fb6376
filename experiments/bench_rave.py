"""Decode throughput of the jitted Flax RAVE decoder vs the TorchScript export, same CPU, same run.

Throughput = individuals (latents of ``--frames`` frames, 64 as in LVNS-RAVE) decoded per second,
noise on in both. The ``.ts`` is called like the original LVNS-RAVE calls it (``model.decode`` in
batches of 64 under ``torch.no_grad``); ours decodes the whole population in one jitted call of
``pure_decode(noise=True)``. Timings are the median of ``--repeats`` runs after one warm-up
(compilation excluded; reported separately). The two sides alternate, so load from other
processes hits both alike.

Real-size random-init exports, made with acids-rave in its venv (not committed, ~70-130 MB)::

    /work/refvenv/bin/python tests/fixtures/rave/make_fixtures.py --full v1 v2 --out weights/rave_full
    .venv/bin/python experiments/bench_rave.py --dir weights/rave_full --models v1 v2 --individuals 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_one(path, individuals, frames, repeats, torch_batch=64):
    import jax
    import numpy as np
    import torch

    from lvns_jax.models import rave

    ts = torch.jit.load(path, map_location="cpu")
    dec = rave.load(path)
    C = dec.latent_size
    z = np.random.default_rng(0).standard_normal((individuals, C, frames)).astype(np.float32)

    def run_torch():
        with torch.no_grad():
            for i in range(0, individuals, torch_batch):
                ts.decode(torch.from_numpy(z[i:i + torch_batch])).numpy()

    f = jax.jit(dec.pure_decode(noise=True))
    zj = jax.numpy.asarray(z)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 2))

    def run_jax():
        f(dec.params, zj, next(keys)).block_until_ready()

    t = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - t
    run_torch()  # warm-up (TorchScript profiling executor)
    tj, tt = [], []
    for _ in range(repeats):  # alternate
        tj += _time(run_jax, 1)
        tt += _time(run_torch, 1)
    mj, mt = statistics.median(tj), statistics.median(tt)
    return {
        "model": os.path.basename(path), "architecture": dec.architecture,
        "decoder_params": int(sum(int(np.prod(v.shape)) for k, v in dec.params.items()
                                  if k not in ("latent_pca", "latent_mean", "pqmf_w"))),
        "individuals": individuals, "frames": frames, "hop": dec.hop, "repeats": repeats,
        "jax_s": mj, "torch_s": mt, "jax_all_s": tj, "torch_all_s": tt, "jax_compile_s": compile_s,
        "jax_ind_per_s": individuals / mj, "torch_ind_per_s": individuals / mt, "ratio_jax_over_torch": mt / mj,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="weights/rave_full")
    p.add_argument("--models", nargs="+", default=["v1", "v2"])
    p.add_argument("--individuals", type=int, default=64)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    import jax
    import torch

    rows = []
    for m in a.models:
        path = os.path.join(a.dir, f"{m}.ts")
        if not os.path.isfile(path):
            sys.exit(f"{path} missing; make it with tests/fixtures/rave/make_fixtures.py --full {m} --out {a.dir}")
        rows.append(bench_one(path, a.individuals, a.frames, a.repeats))
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("all_s")}), flush=True)
    env = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "loadavg_at_end": os.getloadavg()}
    print()
    print(f"{'model':8} {'params':>8} {'indiv':>6} {'frames':>6} {'torch ind/s':>12} {'jax ind/s':>10} "
          f"{'jax/torch':>9} {'compile s':>9}")
    for r in rows:
        print(f"{r['model']:8} {r['decoder_params'] / 1e6:7.1f}M {r['individuals']:6d} {r['frames']:6d} "
              f"{r['torch_ind_per_s']:12.2f} {r['jax_ind_per_s']:10.2f} {r['ratio_jax_over_torch']:9.2f} "
              f"{r['jax_compile_s']:9.1f}")
    out = {"env": env, "results": rows}
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
