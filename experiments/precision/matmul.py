"""The ``precision`` key (matmul precision of the RAVE decoder and the embedder): bfloat16 vs float32.

1. ``speed``: decode and embed of one VCTK-size breed (100 children, latent 8 x 64, untrained RAVE v1
   + VGGish, chunk_size 32: the shapes of experiments/paper/vctk.toml and ``lvns bench``'s measure()),
   median of ``--repeats`` calls after a warm-up (variants timed round-robin), for float32, bfloat16 (convolutions lowered to bf16
   dots, what ``precision = bfloat16`` does on CPU), bfloat16 with XLA's own (upcast) bf16
   convolutions, and default. Also the optimised HLO: convolutions / dots and their operand types.
2. ``quality``: on the same 100 children: relative L2 of the bf16 audio, cosine of the bf16
   embedding of the float32 audio (embedder alone) and of the bf16 audio (whole path), min and mean.
3. ``survivors``: the same search (untrained RAVE v1 + VGGish, N 16, B 8, noise on) with
   precision = float32 and bfloat16: how many survivors differ, generation by generation.

    .venv/bin/python experiments/precision/matmul.py [--parts speed,quality,survivors] [--generations 20]

Writes (updates: parts run separately are merged) ``matmul.json`` here, or ``matmul-<tag>.json`` with ``--tag``.
"""

import argparse
import json
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config, individuals
from lvns_jax.assemble import assemble, build_models
from lvns_jax.models import precision

ap = argparse.ArgumentParser()
ap.add_argument("--parts", default="speed,quality,survivors")
ap.add_argument("--variants", default="float32,bfloat16,bfloat16-conv,default")
ap.add_argument("--generations", type=int, default=20)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--breed", type=int, default=100)
ap.add_argument("--tag", default="")
a = ap.parse_args()
parts = a.parts.split(",")
here = os.path.dirname(os.path.abspath(__file__))
out = {"load_average_at_start": os.getloadavg(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": str(jax.devices()[0]), "jax": jax.__version__,
       "cpu_count": os.cpu_count()}

VCTK = dict(rave="untrained:v1", embedder="untrained:vggish", container_size=500, breed_size=100, k=50,
            latent_channels=8, latent_frames=64, chunk_size=32, progress=False, seed=42, noise=True)


def models_for(variant: str):
    """``variant``: a precision value, or bfloat16-conv (bf16 operands to XLA's own convolution)."""
    name = "bfloat16" if variant == "bfloat16-conv" else variant
    saved = precision.BF16_CONV_UPCAST_PLATFORMS
    if variant == "bfloat16-conv":
        precision.BF16_CONV_UPCAST_PLATFORMS = ()  # policy(): conv_as_dot off
    try:
        return build_models(config.from_dict({**VCTK, "precision": name}))
    finally:
        precision.BF16_CONV_UPCAST_PLATFORMS = saved


def hlo_summary(compiled_text: str) -> dict:
    """Convolution / dot instructions of the optimised HLO, counted by operand and result type."""
    types = {}
    for line in compiled_text.splitlines():
        d = re.match(r"\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[", line)
        if d:
            types[d.group(1)] = d.group(2)
    counts: dict[str, int] = {}
    for line in compiled_text.splitlines():
        m = re.search(r"= (\w+)\[[^\]]*\][^ ]* (convolution|dot)\((%[\w.\-]+), (%[\w.\-]+)\)", line)
        if m:
            key = f"{m.group(2)} {types.get(m.group(3), '?')} x {types.get(m.group(4), '?')} -> {m.group(1)}"
            counts[key] = counts.get(key, 0) + 1
    return counts


cfg = config.from_dict(VCTK)
b = a.breed
rng = np.random.default_rng(0)
z = jnp.asarray(rng.uniform(-1, 1, (b, cfg.latent_channels, cfg.latent_frames)), jnp.float32)
keys = jax.random.split(jax.random.key(7), b)
decode = jax.jit(lambda m, z, k: individuals.decode(m, z, k, cfg.chunk_size))
embed = jax.jit(lambda m, x: individuals.map_individuals(
    lambda mm, xc: mm.embed(mm.embedder_params, xc).astype(jnp.float32), (x,), cfg.chunk_size, shared=(m,)))

variants = a.variants.split(",")
results: dict = {v: {} for v in variants}
if "speed" in parts or "quality" in parts:
    models = {v: models_for(v) for v in variants}
    audio = {v: decode(m, z, keys) for v, m in models.items()}  # compiles
    for v, m in models.items():
        jax.block_until_ready(embed(m, audio[v]))
    if "speed" in parts:
        # round-robin over the variants (the CPU is shared: a slow spell then hits all of them alike)
        # wall seconds and process CPU seconds (all threads: the work done, less sensitive to other load)
        times = {v: {"decode": [], "embed": [], "decode_cpu": [], "embed_cpu": []} for v in variants}
        for _ in range(a.repeats):
            for v, m in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(decode(m, z, keys))
                t1, c1 = time.perf_counter(), time.process_time()
                jax.block_until_ready(embed(m, audio[v]))
                times[v]["decode"].append(t1 - t0)
                times[v]["decode_cpu"].append(c1 - c0)
                times[v]["embed"].append(time.perf_counter() - t1)
                times[v]["embed_cpu"].append(time.process_time() - c1)
        for v, m in models.items():
            r = results[v]
            for stage in ("decode", "embed"):
                r[f"{stage}_s"] = statistics.median(times[v][stage])
                r[f"{stage}_min_s"] = min(times[v][stage])
                r[f"{stage}_cpu_s"] = statistics.median(times[v][stage + "_cpu"])
            r["hlo_decode"] = hlo_summary(decode.lower(m, z, keys).compile().as_text())
            r["hlo_embed"] = hlo_summary(embed.lower(m, audio[v]).compile().as_text())
    if "quality" in parts and "float32" in models:
        ref_audio = np.asarray(audio["float32"], np.float64)
        ref_emb = np.asarray(embed(models["float32"], audio["float32"]), np.float64)
        for v, m in models.items():
            if v == "float32":
                continue
            au = np.asarray(audio[v], np.float64)
            emb = np.asarray(embed(m, audio[v]), np.float64)
            rel = np.linalg.norm(au - ref_audio, axis=-1) / np.linalg.norm(ref_audio, axis=-1)
            cos = np.sum(emb * ref_emb, -1) / np.linalg.norm(emb, axis=-1) / np.linalg.norm(ref_emb, axis=-1)
            e_same = np.asarray(embed(m, audio["float32"]), np.float64)  # the embedder alone
            cos_e = np.sum(e_same * ref_emb, -1) / np.linalg.norm(e_same, axis=-1) / np.linalg.norm(ref_emb, axis=-1)
            results[v].update(audio_rel_l2_max=float(rel.max()), audio_rel_l2_mean=float(rel.mean()),
                              embedding_cosine_min=float(cos.min()), embedding_cosine_mean=float(cos.mean()),
                              embedder_only_cosine_min=float(cos_e.min()),
                              embedder_only_cosine_mean=float(cos_e.mean()),
                              finite=bool(np.isfinite(au).all() and np.isfinite(emb).all()))
    if "float32" in results and "speed" in parts:
        for v, r in results.items():
            for stage in ("decode", "embed"):
                f32 = results["float32"]
                r[f"{stage}_speedup"] = f32[f"{stage}_s"] / r[f"{stage}_s"]
                r[f"{stage}_speedup_min"] = f32[f"{stage}_min_s"] / r[f"{stage}_min_s"]
                r[f"{stage}_speedup_cpu"] = f32[f"{stage}_cpu_s"] / r[f"{stage}_cpu_s"]
    for v, r in results.items():
        print(v, json.dumps({k: x for k, x in r.items() if not k.startswith("hlo")}), flush=True)
    out["load_average_at_end"] = os.getloadavg()
    del models, audio
    out.update(shapes={"children": b, "latent": [cfg.latent_channels, cfg.latent_frames], "chunk_size": cfg.chunk_size,
                       "rave": "untrained:v1", "embedder": "untrained:vggish", "repeats": a.repeats,
                       "timing": "median of repeats, variants timed round-robin"},
               variants=results)

if "survivors" in parts:
    base = dict(rave="untrained:v1", embedder="untrained:vggish", container_size=16, breed_size=8, k=5,
                latent_channels=8, latent_frames=64, chunk_size=8, progress=False, seed=1, noise=True)
    runs = {}
    for prec in ("float32", "bfloat16"):
        e = assemble(config.from_dict({**base, "precision": prec}))
        s = e.init()
        ids = [set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist()))]
        for g in range(a.generations):
            s, _ = e.step(s)
            ids.append(set(zip(np.asarray(s.born).tolist(), np.asarray(s.slot).tolist())))
        runs[prec] = ids
        print(prec, "done", flush=True)
    differ = [len(x - y) for x, y in zip(runs["float32"], runs["bfloat16"])]
    out["survivors"] = {"config": base, "generations": a.generations,
                        "differing_at_init_then_per_generation": differ,
                        "first_generation_with_a_difference": next((g for g, d in enumerate(differ) if d), None)}

print(json.dumps(out, indent=1))
path = os.path.join(here, f"matmul-{a.tag}.json" if a.tag else "matmul.json")
if os.path.isfile(path):  # parts run separately land in one file (the newest run of each part wins)
    with open(path) as f:
        out = {**json.load(f), **out}
with open(path, "w") as f:
    json.dump(out, f, indent=1)
