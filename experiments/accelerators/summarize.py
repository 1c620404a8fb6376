"""One markdown table of the `lvns plan` results (*.json) in this folder (or the files given)."""

from __future__ import annotations

import glob
import json
import os
import sys


def mib(n):
    return "-" if n is None else f"{n / 2**20:.1f}"


def row(name: str, r: dict) -> str:
    c = r["config"]
    size = f"{c['container_size']}/{c['breed_size']}/{c['k']}"
    models = " + ".join(m.split(" (")[0] for m in r["models"])
    head = f"| {name} | {r['topology']} | {r['function']} | {models} | {size} | {r['mesh_devices']}/{r['topology_devices']} |"
    if not r["ok"]:
        return head + f" - | - | - | - | - | {r.get('compile_s', 0):.1f} | {r['error']} |"
    m, cost, h = r["memory"], r["cost"], r["hlo"]
    coll = sum(h["collectives"].values())
    return (head + f" {mib(m['argument_bytes'])} | {mib(m['temp_bytes'])} | {mib(m['generated_code_bytes'])} | "
            f"{mib(m['peak_estimate_bytes'])} | {cost['flops']:.2e} | {r['compile_s']:.1f} | "
            f"f64 {sum(h['f64_ops'].values())}, host cb {sum(h['host_callbacks'].values()) + h['host_transfers']}, "
            f"collectives {coll}, sorts {h['sorts']} |")


def main(paths: list[str]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    paths = paths or sorted(glob.glob(os.path.join(here, "*.json")))
    print("| file | topology | compiled | models | N/B/k | mesh/devices | args MiB | temp MiB | code MiB | "
          "peak MiB | flops | compile s | HLO / result |")
    print("|" + "---|" * 13)
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        for r in res if isinstance(res, list) else [res]:
            print(row(os.path.splitext(os.path.basename(p))[0], r))


if __name__ == "__main__":
    main(sys.argv[1:])
