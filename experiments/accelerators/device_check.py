"""One check of a GPU/TPU machine in under 5 minutes: parity of decode / embed / sparseness against
the CPU, then ``lvns bench``; one JSON line on stdout (``device_check.sh`` runs this).

Parity: a small untrained config (real architectures, random weights; default RAVE v1 + VGGish,
8 individuals of 32 latent frames, k = 3) is built once per platform (``build_models(cfg, platform)``:
on TPU the VGGish front end is the float32 one, on CPU/GPU the float64 island), the CPU's parameters
are copied into the accelerator's models, and the same latents and noise keys are decoded, embedded
and scored (``scorer.initial``: the container's sparseness) on ``jax.devices('cpu')[0]`` and on the
accelerator. Per stage: max abs error, relative error (max abs / max |cpu|), cosine of the flattened
outputs, and whether everything is finite; sparseness also ``from_cpu_embeddings`` (the scorer alone,
fed the CPU's embeddings). Differences come from float rounding of batched kernels, TF32 / bf16 passes
(``precision``) and the front end's precision, not from random draws (each individual's noise comes
from its own key).

Without an accelerator (``jax.default_backend() == 'cpu'``) the accelerator part is
``{"absent": ...}`` and the bench is skipped unless ``--bench-on-cpu``; ``--dry-run`` computes nothing
and reports what it would do. Usage::

    experiments/accelerators/device_check.sh [--dry-run] [--sizes vctk] [--bench-timeout 200]
        [--config rave=untrained:v1 embedder=untrained:vggish ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PARITY_CONFIG = ["rave=untrained:v1", "embedder=untrained:vggish", "container_size=8", "breed_size=8", "k=3",
                 "latent_frames=32", "chunk_size=8"]


def compare(ref, got) -> dict[str, Any]:
    """Max abs error, relative error (max abs / max |ref|), cosine of the flattened arrays, finiteness."""
    import numpy as np

    r = np.asarray(ref, np.float64).ravel()
    g = np.asarray(got, np.float64).ravel()
    fin = bool(np.isfinite(r).all() and np.isfinite(g).all())
    out: dict[str, Any] = {"shape": list(np.shape(ref)), "finite": fin}
    if r.shape != g.shape:
        return {**out, "error": f"shapes differ: {np.shape(ref)} vs {np.shape(got)}"}
    ok = np.isfinite(r) & np.isfinite(g)
    r, g = r[ok], g[ok]
    err = float(np.max(np.abs(r - g))) if r.size else 0.0
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    cos = float(r @ g / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
    return {**out, "max_abs_err": err, "rel_err": err / scale if scale > 0 else err, "cosine": cos}


def _stages(cfg, models, device, z, keys, emb_in=None) -> dict[str, Any]:
    """Audio, embeddings and sparseness of ``z`` computed on ``device`` (inputs committed there)."""
    import jax
    import numpy as np

    from lvns_jax import individuals
    from lvns_jax.assemble import assemble

    search = assemble(cfg, models=models, devices=[device])
    put = lambda x: jax.device_put(x, device)  # noqa: E731
    m, zz, kk = put(models), put(z), put(keys)
    t0 = time.perf_counter()
    audio = jax.jit(individuals.decode_each)(m, zz, kk)
    emb = jax.jit(lambda mm, a: mm.embed(mm.embedder_params, a).astype(jax.numpy.float32))(m, audio)
    sp = jax.jit(search.scorer.initial)(emb)
    out = {"audio": np.asarray(audio), "embeddings": np.asarray(emb), "sparseness": np.asarray(sp)}
    out["seconds"] = time.perf_counter() - t0  # compile included
    if emb_in is not None:
        out["sparseness_from_ref"] = np.asarray(jax.jit(search.scorer.initial)(put(emb_in)))
    out["platform"] = list(audio.devices())[0].platform
    return out


def parity(items: list[str], device, ref_device=None) -> dict[str, Any]:
    """Decode / embed / sparseness of a small config on ``device`` against ``ref_device`` (default:
    the first CPU device)."""
    import jax
    import numpy as np

    from lvns_jax import config as config_lib
    from lvns_jax import individuals
    from lvns_jax.assemble import build_models

    ref_device = ref_device or jax.devices("cpu")[0]
    cfg = config_lib.load(None, items)
    t0 = time.perf_counter()
    with jax.default_device(ref_device):
        ref_models = build_models(cfg, ref_device.platform)
        models = build_models(cfg, device.platform)
        ref_leaves = jax.tree_util.tree_leaves((ref_models.decoder_params, ref_models.embedder_params))
        leaves, tree = jax.tree_util.tree_flatten((models.decoder_params, models.embedder_params))
        same_params = len(leaves) == len(ref_leaves) and all(
            np.shape(a) == np.shape(b) for a, b in zip(leaves, ref_leaves))
        if same_params:  # the very same weights on both sides
            dec, emb_p = jax.tree_util.tree_unflatten(tree, [np.asarray(x) for x in ref_leaves])
            models = models.replace(decoder_params=dec, embedder_params=emb_p)
        n = cfg.container_size
        z = np.asarray(jax.random.normal(jax.random.key(cfg.seed), (n, cfg.latent_channels, cfg.latent_frames)))
        ids = individuals.individual_keys(jax.random.key(cfg.seed + 1), np.zeros((n,), np.int32),
                                          np.arange(n, dtype=np.int32))
        keys = individuals.stream(ids, individuals.NOISE)
    build_s = time.perf_counter() - t0
    ref = _stages(cfg, ref_models, ref_device, z, keys)
    got = _stages(cfg, models, device, z, keys, emb_in=ref["embeddings"])
    res = {"config": items, "device": str(device), "ref_device": str(ref_device), "platform": got["platform"],
           "ref_platform": ref["platform"], "same_params": same_params, "models": list(models.description),
           "build_s": build_s, "ref_seconds": ref["seconds"], "seconds": got["seconds"]}
    for name in ("audio", "embeddings", "sparseness"):
        res[name] = compare(ref[name], got[name])
    res["sparseness"]["from_cpu_embeddings"] = compare(ref["sparseness"], got["sparseness_from_ref"])
    res["sparseness"]["same_order"] = bool((np.argsort(ref["sparseness"]) == np.argsort(got["sparseness"])).all())
    return res


def accelerator():
    """The first non-CPU device, or None."""
    import jax

    if jax.default_backend() == "cpu":
        return None
    return jax.devices()[0]


def bench(sizes: str, timeout: float, repeats: int, items: list[str]) -> dict[str, Any]:
    """``lvns bench --sizes SIZES`` in a subprocess (its own time limit); per size the generation
    seconds, individuals/s and step compile seconds, or an error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "lvns_jax.cli", "bench", *items, "--sizes", sizes, "--repeats", str(repeats),
               "--json", path]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
        except subprocess.TimeoutExpired:
            return {"sizes": sizes, "error": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t0}
        out: dict[str, Any] = {"sizes": sizes, "seconds": time.perf_counter() - t0}
        if r.returncode != 0 or not os.path.exists(path):
            tail = " | ".join((r.stderr or "").strip().splitlines()[-4:])
            return {**out, "error": f"exit {r.returncode}: {tail}"}
        with open(path) as f:
            data = json.load(f)
    out["results"] = [bench_summary(r) for r in data.get("results", [])]
    return out


def bench_summary(r: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one ``lvns bench`` result: generation seconds, individuals/s, the
    step's compile seconds and GFLOP/s, the device (or its error)."""
    if "error" in r:
        return {"name": r.get("name"), "error": r["error"]}
    st = r.get("stages", {}).get("step", {})
    return {"name": r.get("name"), "config": {k: r.get("config", {}).get(k) for k in ("container_size", "breed_size", "k")},
            "models": r.get("models"), "device": r.get("device"), "generation_s": r.get("generation_s"),
            "individuals_per_s": r.get("individuals_per_s"), "step_compile_s": st.get("compile_s"),
            "step_gflops_per_s": st.get("gflops_per_s")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="compute nothing; print the JSON line of what would run")
    p.add_argument("--config", nargs="*", default=None, metavar="key=value",
                   help=f"parity config (default: {' '.join(PARITY_CONFIG)})")
    p.add_argument("--sizes", default="vctk", help="lvns bench --sizes (vctk, small; empty: no bench)")
    p.add_argument("--bench-timeout", type=float, default=200.0, help="seconds the bench may take")
    p.add_argument("--repeats", type=int, default=2, help="lvns bench --repeats")
    p.add_argument("--bench-on-cpu", action="store_true", help="run the bench without an accelerator too")
    p.add_argument("--bench-config", nargs="*", default=[], metavar="key=value",
                   help="config overrides for the bench (default: the defaults, untrained RAVE v1 + VGGish)")
    p.add_argument("--no-parity", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    items = PARITY_CONFIG if args.config is None else args.config
    out: dict[str, Any] = {"device_check": 1, "dry_run": args.dry_run, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
    try:
        import jax

        out["jax"] = jax.__version__
        out["backend"] = jax.default_backend()
        dev = accelerator()
        out["accelerator"] = None if dev is None else {"device": str(dev), "kind": dev.device_kind,
                                                       "platform": dev.platform, "count": jax.device_count()}
    except Exception as e:  # noqa: BLE001 - a report, never a traceback
        out["accelerator"], dev = None, None
        out["error"] = f"jax: {type(e).__name__}: {e}"
    absent = {"absent": f"no accelerator (jax backend {out.get('backend')})"}
    if args.dry_run:
        out["parity"] = {"skipped": "dry run", "config": items} if dev is not None else {**absent, "config": items}
        out["bench"] = {"skipped": "dry run", "sizes": args.sizes}
    else:
        if args.no_parity:
            out["parity"] = {"skipped": "--no-parity"}
        elif dev is None:
            out["parity"] = {**absent, "config": items}
        else:
            try:
                out["parity"] = parity(items, dev)
            except Exception as e:  # noqa: BLE001
                out["parity"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        if not args.sizes:
            out["bench"] = {"skipped": "--sizes ''"}
        elif dev is None and not args.bench_on_cpu:
            out["bench"] = {**absent, "skipped": "no accelerator (--bench-on-cpu to run it anyway)"}
        else:
            out["bench"] = bench(args.sizes, args.bench_timeout, args.repeats, args.bench_config)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
