"""Gradient-guided mutation vs the paper's mutation (issue 7): run, summarise, plot.

    python experiments/gradient/run.py toy --seeds 0,1,2        # tiny differentiable models, minutes
    python experiments/gradient/run.py real --seeds 0           # untrained RAVE v2_small + VGGish
    python experiments/gradient/run.py real --seeds 0 --set noise=false --tag _nonoise   # deterministic decoder

For each mode (paper, gradient, mixed) and seed it runs ``lvns run experiments/gradient/SET_MODE.toml
seed=S --out experiments/gradient/runs/SET/MODE-sS`` (skipped when that run already finished), then

* ``lvns plot`` of the three modes (seed of ``--plot-seed``) vs generation and vs step time, with the
  PCA of the container embeddings -> ``experiments/results/gradient/SET.png``;
* a summary (final mean container sparseness per mode, mean over seeds, and the step time) ->
  ``experiments/results/gradient/SET.json`` and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODES = ("paper", "gradient", "mixed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", choices=["toy", "real"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--plot-seed", type=int, default=None, help="seed whose runs are plotted (default: first)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (e.g. noise=false); use with --tag")
    ap.add_argument("--tag", default="", help="suffix of the run / result names (e.g. _nonoise)")
    ap.add_argument("--runs", default=os.path.join(HERE, "runs"))
    ap.add_argument("--results", default=os.path.join(ROOT, "experiments", "results", "gradient"))
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from lvns_jax import cli
    from lvns_jax.logs import read_metrics

    seeds = [int(s) for s in args.seeds.split(",")]
    run_dirs: dict[tuple[str, int], str] = {}
    for seed in seeds:
        for mode in MODES:
            out = os.path.join(args.runs, args.set + args.tag, f"{mode}-s{seed}")
            cfg = os.path.join(HERE, f"{args.set}_{mode}.toml")
            run_dirs[mode, seed] = out
            if os.path.isfile(os.path.join(out, "metrics.jsonl")) and os.path.isdir(os.path.join(out, "checkpoints")) \
                    and _done(out, read_metrics):
                print(f"[skip] {out} already finished")
                continue
            cmd = ["run", cfg, f"seed={seed}", "progress=false", *args.overrides, "--out", out]
            print("lvns " + " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            rc = cli.main(cmd)
            if rc != 0:
                return rc
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)

    os.makedirs(args.results, exist_ok=True)
    summary = {"set": args.set, "overrides": args.overrides, "seeds": seeds, "modes": {}}
    for mode in MODES:
        finals, steps, gains, vs_random, norms = [], [], [], [], []
        for seed in seeds:
            recs = read_metrics(os.path.join(run_dirs[mode, seed], "metrics.jsonl"))
            finals.append(recs[-1]["sparseness_mean"])
            steps.append(float(np.median([r["step_seconds"] for r in recs[1:]])))
            gains += [r["gradient_gain"] for r in recs[1:] if r.get("gradient_gain") is not None]
            vs_random += [r["gradient_gain_vs_random"] for r in recs[1:] if r.get("gradient_gain_vs_random") is not None]
            norms += [r["gradient_norm"] for r in recs[1:] if r.get("gradient_norm") is not None]
        summary["modes"][mode] = {
            "final_sparseness_mean": float(np.mean(finals)), "final_sparseness_per_seed": finals,
            "generations": recs[-1]["generation"], "median_step_seconds": float(np.mean(steps)),
            "gradient_gain_mean": float(np.mean(gains)) if gains else None,
            "gradient_gain_vs_random_mean": float(np.mean(vs_random)) if vs_random else None,
            "gradient_norm_mean": float(np.mean(norms)) if norms else None,
        }
    with open(os.path.join(args.results, f"{args.set}{args.tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n{'mode':<10} {'final mean sparseness':>22} {'step s':>8} {'gain vs start':>14} {'gain vs random':>15}")
    for mode, s in summary["modes"].items():
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"{mode:<10} {s['final_sparseness_mean']:>22.4g} {s['median_step_seconds']:>8.3g} "
              f"{fmt(s['gradient_gain_mean']):>14} {fmt(s['gradient_gain_vs_random_mean']):>15}")

    seed = seeds[0] if args.plot_seed is None else args.plot_seed
    dirs = [run_dirs[m, seed] for m in MODES]
    fig = os.path.join(args.results, f"{args.set}{args.tag}.png")
    cmd = ["plot", *dirs, "--out", fig, "--x", "both", "--labels", ",".join(MODES),
           "--title", f"{args.set} models{' ' + ' '.join(args.overrides) if args.overrides else ''}, seed {seed}: "
                      f"paper vs gradient vs mixed mutation"]
    print("lvns " + " ".join(cmd))
    return cli.main(cmd)


def _done(out: str, read_metrics) -> bool:
    import tomllib

    with open(os.path.join(out, "config.toml"), "rb") as f:
        want = tomllib.load(f)["generations"]
    recs = read_metrics(os.path.join(out, "metrics.jsonl"))
    return bool(recs) and recs[-1]["generation"] >= want


if __name__ == "__main__":
    sys.exit(main())
