"""Generation throughput on 1 device vs the population sharded over forced CPU devices (not a test).

    python experiments/bench_devices.py                   # 1 vs 8 forced CPU devices
    python experiments/bench_devices.py --devices 1,2,4,8 --n 2048 --b 512

Each device count runs in its own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
and ``devices=d``; toy models (rave=toy vggish=toy: the engine's code path, not the real models'
cost). On a 2-core machine the forced devices share the same cores, so expect no speed-up: this
proves the sharded code path runs and shows its overhead. On a GPU/TPU host run it with
``--real`` to use untrained RAVE v2 + VGGish instead of the toy models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def one(d: int, n: int, b: int, gens: int, real: bool) -> dict:
    import jax

    from lvns_jax import config
    from lvns_jax.assemble import assemble

    models = dict(rave="untrained:v2_small", embedder="untrained:vggish") if real else dict(rave="toy", embedder="toy")
    cfg = config.from_dict(dict(models, container_size=n, breed_size=b, k=30, latent_channels=8, latent_frames=64,
                                chunk_size=64, progress=False, devices=d))
    t0 = time.perf_counter()
    eng = assemble(cfg)
    s = jax.block_until_ready(eng.init())
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s, _ = jax.block_until_ready(eng.run_block(s, gens))  # compile + run
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    s, m = jax.block_until_ready(eng.run_block(s, gens))
    dt = time.perf_counter() - t0
    return dict(devices=d, available=jax.device_count(), n=n, b=b, gens=gens, init_seconds=init_s,
                first_block_seconds=first, seconds_per_gen=dt / gens, individuals_per_second=b * gens / dt,
                shards=len(s.latents.sharding.device_set), backend=jax.default_backend())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="1,8")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--b", type=int, default=512)
    ap.add_argument("--gens", type=int, default=5)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--one", type=int)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.n, args.b, args.gens, args.real)), flush=True)
        return
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.setdefault("JAX_PLATFORMS", "cpu")
    rows = []
    for d in [int(x) for x in args.devices.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(d), "--n", str(args.n), "--b", str(args.b),
               "--gens", str(args.gens)] + (["--real"] if args.real else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f"devices={d}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| devices | N | B | s/generation | individuals/s | compile+first block s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['n']} | {r['b']} | {r['seconds_per_gen']:.3f} | "
              f"{r['individuals_per_second']:.0f} | {r['first_block_seconds']:.1f} |")


if __name__ == "__main__":
    main()
