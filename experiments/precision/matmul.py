"""The ``precision`` key (matmul precision of the RAVE decoder and the embedder): bfloat16 vs float32.

1. ``speed``: decode and embed of one VCTK-size breed (100 children, latent 8 x 64, untrained RAVE v1
   + VGGish, chunk_size 32: the shapes of experiments/paper/vctk.toml and ``lvns bench``'s measure()),
   median of ``--repeats`` calls after a warm-up, for float32, bfloat16 (convolutions lowered to bf16
   dots, what ``precision = bfloat16`` does on CPU), bfloat16 with XLA's own (upcast) bf16
   convolutions, and default. Also the optimised HLO: convolutions / dots and their operand types.
2. ``quality``: on the same 100 children: relative L2 of the bf16 audio, cosine of the bf16
   embedding of the float32 audio (embedder alone) and of the bf16 audio (whole path), min and mean.
3. ``survivors``: the same search (untrained RAVE v1 + VGGish, N 16, B 8, noise on) with
   precision = float32 and bfloat16: how many survivors differ, generation by generation.

    .venv/bin/python experiments/precision/matmul.py [--parts speed,quality,survivors] [--generations 20]

Writes ``matmul.json`` here (``--out`` to change), or ``matmul-<tag>.json`` with ``--tag``.
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
out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "device": str(jax.devices()[0]), "jax": jax.__version__,
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


def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


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
results: dict = {}
ref_audio = ref_emb = None
if "speed" in parts or "quality" in parts:
    for v in variants:
        m = models_for(v)
        r: dict = {}
        if "speed" in parts:
            r["decode_s"], r["decode_min_s"] = timed(decode, m, z, keys)
        audio = decode(m, z, keys)
        if "speed" in parts:
            r["embed_s"], r["embed_min_s"] = timed(embed, m, audio)
            r["hlo_decode"] = hlo_summary(decode.lower(m, z, keys).compile().as_text())
            r["hlo_embed"] = hlo_summary(embed.lower(m, audio).compile().as_text())
        emb = np.asarray(embed(m, audio), np.float64)
        au = np.asarray(audio, np.float64)
        if v == "float32":
            ref_audio, ref_emb = au, emb
        elif ref_audio is not None and "quality" in parts:
            rel = np.linalg.norm(au - ref_audio, axis=-1) / np.linalg.norm(ref_audio, axis=-1)
            cos = np.sum(emb * ref_emb, -1) / np.linalg.norm(emb, axis=-1) / np.linalg.norm(ref_emb, axis=-1)
            emb_same_audio = np.asarray(embed(m, jnp.asarray(ref_audio, jnp.float32)), np.float64)
            cos_e = (np.sum(emb_same_audio * ref_emb, -1) / np.linalg.norm(emb_same_audio, axis=-1)
                     / np.linalg.norm(ref_emb, axis=-1))
            r.update(audio_rel_l2_max=float(rel.max()), audio_rel_l2_mean=float(rel.mean()),
                     embedding_cosine_min=float(cos.min()), embedding_cosine_mean=float(cos.mean()),
                     embedder_only_cosine_min=float(cos_e.min()), embedder_only_cosine_mean=float(cos_e.mean()),
                     finite=bool(np.isfinite(au).all() and np.isfinite(emb).all()))
        results[v] = r
        print(v, json.dumps({k: x for k, x in r.items() if not k.startswith("hlo")}), flush=True)
        del m, audio
    if "float32" in results and "speed" in parts:
        for v, r in results.items():
            r["decode_speedup"] = results["float32"]["decode_s"] / r["decode_s"]
            r["embed_speedup"] = results["float32"]["embed_s"] / r["embed_s"]
    out.update(shapes={"children": b, "latent": [cfg.latent_channels, cfg.latent_frames], "chunk_size": cfg.chunk_size,
                       "rave": "untrained:v1", "embedder": "untrained:vggish", "repeats": a.repeats},
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
name = f"matmul-{a.tag}.json" if a.tag else "matmul.json"
with open(os.path.join(here, name), "w") as f:
    json.dump(out, f, indent=1)
