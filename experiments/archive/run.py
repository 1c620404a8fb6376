"""Novelty archive vs none: final container sparseness and coverage, same seeds, same budget.

For each model pair (toy; untrained real-size RAVE v2_small + VGGish) and seed, two searches run
for the same number of generations: ``archive = "none"`` (the paper) and ``archive = "threshold"``
(adaptive threshold, Lehman & Stanley). Measured on the final state:

* ``container_sparseness``: mean kNN sparseness of the final container within itself;
* ``kept_sparseness``: the same over everything the run keeps (container + archive);
* ``coverage``: occupied cells of a 16 x 16 grid over the first two principal components of the
  embeddings, the PCA and grid fitted once on the union of both runs' kept sets (so the two runs
  are measured on the same map); counted for the container alone and for container + archive.

Usage: ``python experiments/archive/run.py [--generations 40] [--seeds 0,1,2] [--real]``; writes
``experiments/archive/results.json`` and prints a Markdown table. UNTRAINED real-size models: the
figures are about the search's behaviour, not about sounds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from lvns_jax import config, novelty
from lvns_jax.assemble import assemble

SETUPS = {
    "toy": dict(rave="toy", embedder="toy", container_size=64, breed_size=32, k=10, latent_channels=4,
                latent_frames=16, chunk_size=32),
    "untrained-v2_small+vggish": dict(rave="untrained:v2_small", embedder="untrained:vggish", container_size=32,
                                      breed_size=16, k=8, latent_channels=8, latent_frames=96, chunk_size=16),
}


def run(setup: dict, archive: str, seed: int, generations: int) -> dict:
    over = dict(setup, seed=seed, progress=False, archive=archive, archive_size=4 * setup["container_size"],
                archive_rate=0.1)
    e = assemble(config.from_dict(over))
    t0 = time.perf_counter()
    s, m = e.run_block(e.init(), generations)
    jax.block_until_ready(s)
    cont = np.asarray(s.embeddings)
    kept = cont
    if s.archive is not None:
        valid = np.asarray(s.archive.valid())
        kept = np.concatenate([cont, np.asarray(s.archive.embeddings)[valid]])
    k = setup["k"]
    return dict(container=cont, kept=kept, seconds=time.perf_counter() - t0,
                container_sparseness=float(np.mean(np.asarray(novelty.sparseness(cont, k)))),
                kept_sparseness=float(np.mean(np.asarray(novelty.sparseness(kept, min(k, len(kept) - 1))))),
                archive_size=int(s.archive.size) if s.archive is not None else 0,
                archive_threshold=float(s.archive.threshold) if s.archive is not None else None)


def coverage(sets: list[np.ndarray], bins: int = 16) -> list[int]:
    """Occupied cells of one PCA grid (fitted on all sets together) for each set."""
    allx = np.concatenate(sets).astype(np.float64)
    mu = allx.mean(0)
    _, _, vt = np.linalg.svd(allx - mu, full_matrices=False)
    proj = [(x - mu) @ vt[:2].T for x in sets]
    lo, hi = np.min(np.concatenate(proj), 0), np.max(np.concatenate(proj), 0)
    cells = []
    for p in proj:
        ij = np.clip(((p - lo) / np.maximum(hi - lo, 1e-12) * bins).astype(int), 0, bins - 1)
        cells.append(len({tuple(r) for r in ij}))
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--setups", default="toy,untrained-v2_small+vggish")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
    a = ap.parse_args()
    rows = []
    for name in a.setups.split(","):
        for seed in [int(x) for x in a.seeds.split(",")]:
            none = run(SETUPS[name], "none", seed, a.generations)
            arch = run(SETUPS[name], "threshold", seed, a.generations)
            cov = coverage([none["container"], arch["container"], arch["kept"]])
            row = dict(setup=name, seed=seed, generations=a.generations,
                       none_container_sparseness=none["container_sparseness"],
                       archive_container_sparseness=arch["container_sparseness"],
                       archive_kept_sparseness=arch["kept_sparseness"], archive_size=arch["archive_size"],
                       archive_threshold=arch["archive_threshold"], none_coverage=cov[0],
                       archive_container_coverage=cov[1], archive_kept_coverage=cov[2],
                       seconds_none=none["seconds"], seconds_archive=arch["seconds"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "note": "UNTRAINED real-size models and toy models: search behaviour only"}, f, indent=1)
    print("\n| setup | seed | container sparseness: none / archive | archive size | coverage (cells of 256): "
          "none / archive container / container + archive | s/run: none / archive |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['seed']} | {r['none_container_sparseness']:.4g} / {r['archive_container_sparseness']:.4g}"
              f" | {r['archive_size']} | {r['none_coverage']} / {r['archive_container_coverage']} / "
              f"{r['archive_kept_coverage']} | {r['seconds_none']:.1f} / {r['seconds_archive']:.1f} |")


if __name__ == "__main__":
    main()
