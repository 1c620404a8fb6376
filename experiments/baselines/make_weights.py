"""Random-init, real-size weights for the benchmark baseline (run in the reference venv).

    refvenv/bin/python experiments/baselines/make_weights.py --out weights/bench

writes ``v1.ts`` (acids-rave v1 built from its packaged gin config, seed 0, exported with
acids-rave's own export code, user latent 8 as the paper's VCTK model) and ``vggish.pth``
(a torchvggish state dict with the deterministic synthetic weights of
``tests/fixtures/vggish_synth.py``). Both are UNTRAINED: they exist to time the two
implementations on identical weights, not to make meaningful sounds.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "rave"))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(ROOT, "weights", "bench"))
    p.add_argument("--rave", nargs="*", default=["v1"], help="acids-rave configs to export (v1 v2 ...)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import torch
    import vggish_synth

    path = os.path.join(a.out, "vggish.pth")
    if not os.path.exists(path):
        torch.save({k: torch.from_numpy(v) for k, v in vggish_synth.state_dict().items()}, path)
        print("wrote", path, flush=True)
    import make_fixtures

    for name in a.rave:
        ts = os.path.join(a.out, f"{name}.ts")
        if not os.path.exists(ts):
            files, bindings = make_fixtures.FULL[name]
            make_fixtures.build(name, files, bindings, ts, user_latent=8)
            print("wrote", ts, flush=True)


if __name__ == "__main__":
    main()
