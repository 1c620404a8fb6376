"""``lvns bench``: time the jitted generation step, stage by stage, against the original algorithm.

What is measured, for each size (each size runs in its own subprocess, so that its peak memory
is its own):

* the stages of :func:`lvns_jax.search.step` jitted on their own — ``breed`` (the emitter),
  ``decode`` (children, in ``chunk_size`` batches), ``embed``, ``sparseness`` (the scorer, over
  container + children + archive), ``select`` — and the whole ``step`` (the very function
  ``lvns run`` runs, any emitter/scorer/archive): median seconds over ``repeats`` calls after a warm-up
  call, compile time (first call minus the median), individuals per second (children evaluated
  per second, the work a generation adds), and the process' peak resident memory; the JSON also
  has each stage's median process CPU seconds (``cpu_s``, all threads: on a CPU shared with other
  jobs, ``cpu_s / cores`` is closer to the undisturbed wall time than ``seconds``);
* the floating-point work of each stage (XLA's ``compiled.cost_analysis()["flops"]``) and the
  achieved GFLOP/s (flops / median seconds). XLA counts a loop body ONCE whatever its trip count,
  so the chunked stages (``decode``, ``embed``: a ``lax.map`` over ``ceil(B / chunk_size)``
  chunks) are costed as one chunk's function compiled on its own, times the number of chunks
  (padded individuals of an unbalanced last chunk are work done, and counted); ``step`` is the sum
  of the stages (its own cost analysis would count the chunk loop once). Convolutions and matmuls
  are counted at 2 flops per multiply-add; FFTs, gathers and transcendentals are not counted by
  XLA:CPU (they are small next to the two networks);
* optionally the ORIGINAL LVNS-RAVE loop (``experiments/baselines/original_lvns.py``, run with a
  Python that has torch + torchvggish, e.g. the reference venv) on the very same weights: the
  ``.ts`` export and the torchvggish state dict, which are converted for our side. The ratio
  printed is the original's seconds per generation over ours.

The container's initial embeddings are random in the benchmark (``synthetic init``): the cost of a
generation does not depend on their values, and it spares decoding the whole container at the
large scaling sizes. Everything here is a measurement; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

SIZES = {
    # name: (container, breed, k)
    "small": (50, 30, 30),
    "vctk": (500, 100, 50),
}
STAGES = ("breed", "decode", "embed", "sparseness", "select", "step")


def _time(fn: Callable, *args, repeats: int) -> tuple[float, float, float]:
    """(first call seconds, median of ``repeats`` later calls, their median process CPU seconds)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, statistics.median(times), statistics.median(cpu)


def flops_of(fn: Callable, *args) -> float | None:
    """XLA's flop count of ``jax.jit(fn)(*args)`` (a loop body counted once), None if unavailable."""
    import jax

    try:
        c = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - a measurement, never fatal
        return None
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    f = (c or {}).get("flops")
    return float(f) if f is not None and f >= 0 else None


def chunk_plan(b: int, chunk_size: int, mesh=None) -> tuple[int, int, int]:
    """(devices, chunks per device, individuals per chunk) of :func:`individuals.map_individuals`."""
    from lvns_jax import distributed, individuals

    d = distributed.shards(mesh)
    local = b // d
    n = individuals.num_chunks(local, chunk_size)
    return d, n, -(-local // n)


def synthetic_state(search, seed: int = 0):
    """A search state with a random container and random embeddings (no decoding)."""
    import jax
    import jax.numpy as jnp

    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    t = search.template()
    latents = search.initializer(k1)
    emb = jax.random.normal(k2, t.embeddings.shape, jnp.float32)
    state = t.replace(key=k3, id_key=k4, latents=latents, embeddings=emb,
                      slot=jnp.arange(search.container_size, dtype=jnp.int32))
    return search.attach(state.replace(knn=None))


def measure(cfg, repeats: int = 3) -> dict[str, Any]:
    """Per-stage and whole-step timings of one configuration (in this process).

    The stages are the step's own functions (:mod:`lvns_jax.search`: ``emit``, ``evaluate`` split into
    its decode and embed halves through the same chunked map, ``score``, ``select``) jitted on their own,
    and ``step`` is exactly the step ``lvns run`` runs.
    """
    import jax
    import jax.numpy as jnp

    from lvns_jax import individuals, search
    from lvns_jax.assemble import assemble

    t0 = time.perf_counter()
    eng = assemble(cfg)
    models = eng.models
    load_s = time.perf_counter() - t0
    state = synthetic_state(eng, cfg.seed)
    n, b = cfg.container_size, cfg.breed_size
    gen_key = jax.random.key(1)
    child_born = jnp.ones((b,), jnp.int32)
    child_slot = jnp.arange(b, dtype=jnp.int32)
    child_keys = individuals.individual_keys(state.id_key, child_born, child_slot)
    noise_keys = individuals.stream(child_keys, individuals.NOISE)

    emit = jax.jit(lambda e, s, k, ck: search.emit(e, s, k, ck)[0])
    decode = jax.jit(lambda e, z, ks: individuals.decode(e.models, z, ks, e.chunk_size, e.mesh))
    embed = jax.jit(lambda e, a: individuals.map_individuals(
        lambda m, ac: m.embed(m.embedder_params, ac).astype(jnp.float32), (a,), e.chunk_size, e.mesh,
        shared=(e.models,)))
    score = jax.jit(lambda e, s, ce: search.score(e, s, s.embeddings, ce, child_born, child_slot)[0])
    select = jax.jit(search.select)

    out: dict[str, Any] = {"config": {"container_size": n, "breed_size": b, "k": cfg.k, "rave": cfg.rave,
                                      "embedder": cfg.embedder, "latent": [cfg.latent_channels, cfg.latent_frames],
                                      "chunk_size": cfg.chunk_size, "rule": cfg.sparseness_rule, "knn": cfg.knn,
                                      "emitter": type(eng.emitter).__name__, "archive": cfg.archive,
                                      "reevaluate_container": cfg.reevaluate_container},
                           "models": list(models.description), "trained": models.trained,
                           "device": str(jax.devices()[0]), "device_count": jax.device_count(),
                           "load_s": load_s, "stages": {}}

    def record(name, first, med, cpu=None):
        out["stages"][name] = {"seconds": med, "compile_s": max(first - med, 0.0), "cpu_s": cpu}

    def record_flops(name, flops):
        st = out["stages"][name]
        st["gflop"] = None if flops is None else flops / 1e9
        st["gflops_per_s"] = None if flops is None or st["seconds"] <= 0 else flops / 1e9 / st["seconds"]

    children = emit(eng, state, gen_key, child_keys)
    record("breed", *_time(emit, eng, state, gen_key, child_keys, repeats=repeats))
    audio = decode(eng, children, noise_keys)
    record("decode", *_time(decode, eng, children, noise_keys, repeats=repeats))
    record("embed", *_time(embed, eng, audio, repeats=repeats))
    child_emb = embed(eng, audio)
    del audio
    record("sparseness", *_time(score, eng, state, child_emb, repeats=repeats))
    sp = score(eng, state, child_emb)
    record("select", *_time(select, eng, gen_key, sp, repeats=repeats))

    # flops: the chunked stages as one chunk (XLA counts a lax.map body once) times the chunks
    devs, n_chunks, c = chunk_plan(b, eng.chunk_size, eng.mesh)
    out["chunks"] = {"devices": devs, "chunks_per_device": n_chunks, "chunk": c}
    z1, k1 = children[:c], noise_keys[:c]
    audio1 = individuals.decode_each(models, z1, k1)
    f_dec = flops_of(lambda m, z, ks: individuals.decode_each(m, z, ks), models, z1, k1)
    f_emb = flops_of(lambda m, a: m.embed(m.embedder_params, a), models, audio1)
    del audio1
    scale = devs * n_chunks
    stage_flops = {"breed": flops_of(emit, eng, state, gen_key, child_keys),
                   "decode": None if f_dec is None else f_dec * scale,
                   "embed": None if f_emb is None else f_emb * scale,
                   "sparseness": flops_of(score, eng, state, child_emb),
                   "select": flops_of(select, eng, gen_key, sp)}

    first_s = time.perf_counter()
    s1, _ = search.step(eng, state)
    jax.block_until_ready(s1)
    first = time.perf_counter() - first_s
    times, cpu, s = [], [], s1
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        s, _ = search.step(eng, s)
        jax.block_until_ready(s)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    record("step", first, med, statistics.median(cpu))
    for name, f in stage_flops.items():
        record_flops(name, f)
    record_flops("step", None if any(f is None for f in stage_flops.values()) else sum(stage_flops.values()))
    out["generation_s"] = med
    out["individuals_per_s"] = b / med
    out["stage_sum_s"] = sum(out["stages"][k]["seconds"] for k in STAGES[:-1])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _json_of(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; its last JSON line on stdout, or {"error": ...} with the end of its stderr."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or "").strip().splitlines()[-5:]
        return {"error": f"exit {r.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _run_one_subprocess(overrides: dict[str, Any], repeats: int) -> dict[str, Any]:
    res = _json_of([sys.executable, "-m", "lvns_jax.bench", "--one", json.dumps(overrides), "--repeats", str(repeats)])
    return {**res, "config": overrides} if "error" in res else res


def run_baseline(python: str, ts: str, vggish_pth: str, container: int, breed: int, k: int, frames: int,
                 generations: int) -> dict[str, Any]:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "baselines", "original_lvns.py")
    cmd = [python, script, "--ts", ts, "--vggish", vggish_pth, "--container", str(container), "--breed",
           str(breed), "--k", str(k), "--frames", str(frames), "--generations", str(generations)]
    res = _json_of(cmd)
    if "error" in res:
        return res
    res["seconds_per_generation"] = statistics.median(res["generation_s"])
    return res


def _convert_for_us(ts: str | None, vggish_pth: str | None, tmp: str) -> dict[str, str]:
    """Convert the baseline's weights so both sides run the same ones."""
    over: dict[str, str] = {}
    if ts:
        from lvns_jax.models.rave.convert import convert

        convert(ts, os.path.join(tmp, "rave"))
        over["rave"] = os.path.join(tmp, "rave")
    if vggish_pth:
        from lvns_jax.models.vggish.convert import convert as vconvert

        vconvert(vggish_pth, os.path.join(tmp, "vggish"))
        over["embedder"] = os.path.join(tmp, "vggish")
    return over


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'size':>12} {'N':>6} {'B':>6} {'k':>4} {'latent':>7} | " +
            " ".join(f"{s:>10}" for s in STAGES) + f" | {'ind/s':>8} {'compile':>8} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r.get('name', '?'):>12} ERROR {r['error']}")
            continue
        c = r["config"]
        st = r["stages"]
        lines.append(
            f"{r.get('name', ''):>12} {c['container_size']:>6} {c['breed_size']:>6} {c['k']:>4} "
            f"{c['latent'][0]}x{c['latent'][1]:<5} | " + " ".join(f"{st[s]['seconds']:>10.4f}" for s in STAGES) +
            f" | {r['individuals_per_s']:>8.2f} {st['step']['compile_s']:>8.1f} {r['peak_rss_mb']:>8.0f}")
        if any(st[s].get("gflops_per_s") is not None for s in STAGES):
            gf = [st[s].get("gflops_per_s") for s in STAGES]
            lines.append(f"{'GFLOP/s':>39} | " + " ".join(f"{'-' if g is None else f'{g:.1f}':>10}" for g in gf) +
                         f" | {st['step'].get('gflop') or 0:>8.4g} GFLOP/generation")
    lines.append("(stage columns: median seconds per generation, and under them the achieved GFLOP/s = XLA's "
                 "flop count / seconds; ind/s = children evaluated per second by the whole jitted step; "
                 "compile = first step call minus median)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lvns_jax import config as config_lib
    from lvns_jax.errors import LvnsError

    p = argparse.ArgumentParser(prog="lvns bench", description=__doc__.splitlines()[0])
    p.add_argument("items", nargs="*", metavar="key=value", help="config overrides for every size")
    p.add_argument("--sizes", default="small,vctk", help="comma list of small, vctk (default both)")
    p.add_argument("--scaling", default="", help="comma list of container sizes for the scaling table "
                   "(breed = 20%% of the container), e.g. 50,500,5000,50000")
    p.add_argument("--scaling-frames", type=int, default=0,
                   help="latent frames T for the scaling table (default: the config's; small T when decode dominates)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", action="store_true", help="also time the original algorithm (needs --ref-python)")
    p.add_argument("--ref-python", default=os.environ.get("LVNS_REF_PYTHON", ""),
                   help="Python with torch + torchvggish for the baseline (env LVNS_REF_PYTHON)")
    p.add_argument("--rave-ts", default="", help="RAVE .ts export: the baseline decodes with it, we with its conversion")
    p.add_argument("--vggish-pth", default="", help="torchvggish state dict, used by both sides likewise")
    p.add_argument("--baseline-generations", type=int, default=1)
    p.add_argument("--baseline-sizes", default="", help="sizes the baseline runs at (default: all of --sizes)")
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.one:  # child process: one configuration
        cfg = config_lib.from_dict({**json.loads(a.one), "progress": False})
        print(json.dumps(measure(cfg, a.repeats)), flush=True)
        return 0

    base = config_lib.parse_overrides(a.items)
    from lvns_jax.assemble import check

    check(config_lib.from_dict(base))  # fail early on bad keys and plug-in names
    if a.baseline and not (a.ref_python and a.rave_ts and a.vggish_pth):
        raise LvnsError("--baseline needs --ref-python, --rave-ts and --vggish-pth "
                        "(see experiments/README.md: make them with experiments/baselines/make_weights.py)")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {**base, **_convert_for_us(a.rave_ts or None, a.vggish_pth or None, tmp)}
        jobs = []
        for name in [s for s in a.sizes.split(",") if s]:
            if name not in SIZES:
                raise LvnsError(f"--sizes: unknown size {name!r}; allowed: {', '.join(SIZES)}")
            n, b, k = SIZES[name]
            jobs.append((name, {**base, "container_size": n, "breed_size": b, "k": k}))
        for n in [int(s) for s in a.scaling.split(",") if s]:
            b = max(1, n // 5)
            over = {**base, "container_size": n, "breed_size": b, "k": min(base.get("k", 30), n + b - 1)}
            if a.scaling_frames:
                over["latent_frames"] = a.scaling_frames
            jobs.append((f"scale-{n}", over))
        for name, over in jobs:
            print(f"lvns bench: {name} ...", file=sys.stderr, flush=True)
            r = _run_one_subprocess(over, a.repeats)
            r["name"] = name
            results.append(r)
        baselines = {}
        if a.baseline:
            wanted = [s for s in (a.baseline_sizes or a.sizes).split(",") if s]
            for name in wanted:
                n, b, k = SIZES[name]
                ours = next(r for r in results if r.get("name") == name)
                frames = ours.get("config", {}).get("latent", [8, 64])[1]
                print(f"lvns bench: original algorithm at {name} ({a.baseline_generations} generation(s)) ...",
                      file=sys.stderr, flush=True)
                bl = run_baseline(a.ref_python, a.rave_ts, a.vggish_pth, n, b, k, frames, a.baseline_generations)
                if "error" not in bl and "error" not in ours:
                    bl["speedup"] = bl["seconds_per_generation"] / ours["generation_s"]
                baselines[name] = bl
    print(table(results))
    for name, bl in baselines.items():
        if "error" in bl:
            print(f"baseline {name}: ERROR {bl['error']}")
        else:
            ours = next(r for r in results if r.get("name") == name)
            print(f"baseline {name}: original loop {bl['seconds_per_generation']:.2f} s/generation "
                  f"(decode {bl.get('decode_s', float('nan')):.1f} s, embed {bl.get('embed_s', float('nan')):.1f} s, "
                  f"kNN {bl.get('knn_s', float('nan')):.2f} s), lvns-jax {ours['generation_s']:.3f} s/generation "
                  f"-> speed-up {bl['speedup']:.1f}x")
    if any(not r.get("trained", True) for r in results if "error" not in r):
        print("note: UNTRAINED models (random init): timings are real, the sounds are not meaningful.")
    doc = {"results": results, "baseline": baselines, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"lvns bench: wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
