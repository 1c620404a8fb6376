"""Benchmark (not a test): VGGish embedding throughput, jitted batched Flax vs the torchvggish loop.

Throughput is clips of ``--seconds`` (3 s) at ``--rate`` (44.1 kHz) embedded per second:

* lvns-jax: ``jax.jit(model.pure_embed(rate))`` on batches of ``--batch`` clips (front end with
  the polyphase resampler + VGG + mean over each clip's examples, one XLA program); compile
  time is measured separately and excluded from the throughput.
* reference: what LVNS-RAVE's ``EPrior.evaluate`` does with torchvggish (``postprocess=False``),
  one clip at a time: ``vggish_input.waveform_to_examples(clip, rate)`` (resampy kaiser_best +
  NumPy log-mel), the VGG forward (grad mode on, as in the original, which has no
  ``torch.no_grad``), then the mean over the clip's examples. One warm-up clip (numba JIT of
  resampy) is excluded.

Both use the same random-init weights: a synthetic torchvggish state dict (He-normal, see
``tests/fixtures/vggish_synth.py``) is saved as a .pth, converted with ``lvns convert vggish``
for lvns-jax and loaded with ``load_state_dict`` into torchvggish's ``VGG`` for the reference.
torchvggish lives in a separate venv, so the reference half runs in a subprocess with
``--ref-python`` (default ``$LVNS_REF_PYTHON`` or ``/work/refvenv/bin/python``). Both halves run
on the same CPU in the same invocation, one after the other, with each library's default
threading. The embeddings of the two are compared as a sanity check (cosine, relative L2).

    .venv/bin/python experiments/bench_vggish.py --clips 32 --batch 32 --json bench_vggish.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_clips(n: int, seconds: float, rate: int, seed: int):
    """Deterministic test audio: a few decaying partials over noise, float32 in [-1, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    clips = np.empty((n, t.size), np.float32)
    for i in range(n):
        x = 0.02 * rng.standard_normal(t.size)
        for _ in range(4):
            f = rng.uniform(80.0, 6000.0)
            x += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) \
                * np.exp(-t * rng.uniform(0.2, 3.0))
        clips[i] = np.clip(x, -1.0, 1.0)
    return clips


# ----------------------------------------------------------------------------- reference half


def reference_worker(args) -> None:
    """Runs in the torchvggish venv; prints one JSON line."""
    import numpy as np
    import torch
    from torchvggish import torchvggish as tv
    from torchvggish import vggish_input

    model = tv.VGG(tv.make_layers(), postprocess=False)
    model.load_state_dict(torch.load(args.pth, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    clips = np.load(args.clips_npy)

    def evaluate(audios):  # EPrior.evaluate, with the hub model's forward(x, fs) spelled out
        embeddings = torch.zeros(audios.shape[0], 128)
        for i, audio in enumerate(audios):
            examples = vggish_input.waveform_to_examples(audio, args.rate)  # VGGish._preprocess
            embedding = model.forward(examples)
            embeddings[i] = embedding.mean(axis=0) if len(embedding.shape) > 1 else embedding
        return embeddings

    evaluate(clips[:1])  # warm-up: numba compiles resampy's kernel
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        emb = evaluate(clips)
        times.append(time.perf_counter() - t0)
    np.save(args.out_npy, emb.detach().numpy())
    print(json.dumps({"seconds": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "numpy": np.__version__}))


# ----------------------------------------------------------------------------- lvns-jax half


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=32, help="number of clips (default 32)")
    p.add_argument("--batch", type=int, default=32, help="Flax batch size (default 32)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rate", type=int, default=44100)
    p.add_argument("--repeats", type=int, default=3, help="timed passes over all clips; the best is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-python", default=os.environ.get("LVNS_REF_PYTHON", "/work/refvenv/bin/python"),
                   help="python of a venv with torchvggish, resampy and torch (env LVNS_REF_PYTHON)")
    p.add_argument("--skip-reference", action="store_true", help="only time lvns-jax")
    p.add_argument("--json", default=None, help="also write the results here")
    # internal: the reference half
    p.add_argument("--worker-reference", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pth", help=argparse.SUPPRESS)
    p.add_argument("--clips-npy", help=argparse.SUPPRESS)
    p.add_argument("--out-npy", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_reference:
        reference_worker(args)
        return 0

    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    sys.path.insert(0, ROOT)
    import vggish_synth

    with tempfile.TemporaryDirectory(prefix="bench_vggish_") as tmp:
        # same weights for both: a torchvggish state dict, converted for lvns-jax
        import torch

        pth = os.path.join(tmp, "vggish-random.pth")
        torch.save({k: torch.from_numpy(v) for k, v in vggish_synth.state_dict(args.seed).items()}, pth)
        del torch
        clips = make_clips(args.clips, args.seconds, args.rate, args.seed)
        clips_npy = os.path.join(tmp, "clips.npy")
        np.save(clips_npy, clips)

        import jax

        from lvns_jax.models import vggish
        from lvns_jax.models.vggish.convert import convert

        convert(pth, os.path.join(tmp, "weights"))
        model = vggish.load(os.path.join(tmp, "weights"))
        f = jax.jit(model.pure_embed(args.rate))
        batches = [clips[i : i + args.batch] for i in range(0, len(clips), args.batch)]
        t0 = time.perf_counter()
        for b in {len(b): b for b in batches}.values():  # compile each distinct batch shape
            f(model.params, b).block_until_ready()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = [f(model.params, b) for b in batches]
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        flax_emb = np.concatenate([np.asarray(o) for o in out])
        flax_cps = args.clips / min(times)
        results = {
            "clips": args.clips, "seconds_per_clip": args.seconds, "sample_rate": args.rate,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "lvns_jax": {"clips_per_s": flax_cps, "batch": args.batch, "pass_seconds": times,
                         "compile_seconds": compile_s, "jax": jax.__version__,
                         "device": str(jax.devices()[0])},
        }
        if not args.skip_reference:
            ref_out = os.path.join(tmp, "ref_emb.npy")
            cmd = [args.ref_python, os.path.abspath(__file__), "--worker-reference", "--pth", pth,
                   "--clips-npy", clips_npy, "--out-npy", ref_out, "--rate", str(args.rate),
                   "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"reference half failed ({args.ref_python}); use --skip-reference to time lvns-jax only")
            ref = json.loads(proc.stdout.strip().splitlines()[-1])
            ref_emb = np.load(ref_out)
            ref_cps = args.clips / min(ref["seconds"])
            a, b = flax_emb.astype(np.float64), ref_emb.astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
            results["reference"] = {"clips_per_s": ref_cps, "pass_seconds": ref["seconds"],
                                    "torch": ref["torch"], "torch_threads": ref["threads"],
                                    "what": "torchvggish VGG + vggish_input (resampy), one clip at a time"}
            results["speedup"] = flax_cps / ref_cps
            results["agreement"] = {"min_cosine": float(cos.min()), "max_rel_l2": float(rel.max())}

    print(f"VGGish embedding throughput: {args.clips} clips of {args.seconds:g} s at {args.rate} Hz "
          f"(best of {args.repeats}), {results['cpu_count']} CPUs")
    print(f"{'':28s} {'clips/s':>10s} {'s/pass':>9s}")
    print(f"{'lvns-jax (jit, batch ' + str(args.batch) + ')':28s} {flax_cps:10.2f} {min(times):9.3f}"
          f"   (compile {compile_s:.1f} s, not counted)")
    if "reference" in results:
        r = results["reference"]
        print(f"{'torchvggish loop':28s} {r['clips_per_s']:10.2f} {min(r['pass_seconds']):9.3f}")
        print(f"speedup (lvns-jax / torchvggish): {results['speedup']:.2f}x; embeddings agree: "
              f"min cosine {results['agreement']['min_cosine']:.6f}, max rel L2 {results['agreement']['max_rel_l2']:.2e}")
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
