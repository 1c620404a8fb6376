"""One markdown table of the `lvns plan` results (*.json) in this folder (or the files given)."""

from __future__ import annotations

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


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


def generation(r: dict) -> tuple[dict | None, str]:
    """(per-generation flops/bytes, where from): the result's own (``lvns plan`` since the roofline),
    or, for older files, the compiled cost when the step has no chunk loop (each device's children fit
    in one chunk: nothing was counted once that runs more often)."""
    if r.get("per_generation"):
        return r["per_generation"], "plan"
    c, cost = r["config"], r.get("cost") or {}
    local = c["breed_size"] // max(r["mesh_devices"], 1)
    loops = (r.get("hlo") or {}).get("while_loops", 1)
    if local <= c["chunk_size"] and not c.get("reevaluate_container") and not loops and "bytes_accessed" in cost:
        return {"flops": cost["flops"], "bytes_accessed": cost["bytes_accessed"]}, "cost (no loop)"
    return None, "-"


def roofline_row(name: str, r: dict) -> str | None:
    from lvns_jax import plan

    if not r["ok"]:
        return None
    gen, src = generation(r)
    if gen is None:
        return f"| {name} | {r['topology']} | - | - | - | - | - | - | - | loops not costed (older file) |"
    # files from before the precision key were compiled at the backend's default precision; the
    # estimate is for today's default (float32 = HIGHEST), the bf16 column for precision=bfloat16
    prec = r["config"].get("precision", "float32")
    args = (gen["flops"], gen["bytes_accessed"], r["device_kind"])
    roof = r.get("roofline") or plan.roofline(*args, prec, r["config"]["breed_size"])
    bf16 = plan.roofline(*args, "bfloat16", r["config"]["breed_size"])
    if roof is None:
        return f"| {name} | {r['topology']} | {gen['flops']:.2e} | {mib(gen['bytes_accessed'])} | - | - | - | - | - | {src} |"
    return (f"| {name} | {r['topology']} | {gen['flops']:.2e} | {mib(gen['bytes_accessed'])} | {prec} | "
            f"{roof['compute_s'] * 1e3:.3g} | {bf16['compute_s'] * 1e3:.3g} | {roof['memory_s'] * 1e3:.3g} | "
            f"{roof['individuals_per_s']:.3g} | {roof['bound']} bound; {src} |")


SIZES = {"default": "default 50/30/30", "vctk": "VCTK 500/100/50", "100k": "102,400/10,240/30 incremental",
         "1m": "1,048,576/102,400/30 incremental"}


TOPOLOGIES = ["v5e-2x4", "v5e-8x8", "v5p-2x4x4", "v6e-2x4", "h100-1", "h100-8"]  # the table's column order


def _table_order(name: str) -> tuple:
    """Rows by size (as SIZES), then topology (as TOPOLOGIES), then name."""
    size, _, topo = name.partition("-")
    sizes = list(SIZES)
    return (sizes.index(size) if size in sizes else len(sizes),
            TOPOLOGIES.index(topo) if topo in TOPOLOGIES else len(TOPOLOGIES), name)


def size_table(results: list[tuple[str, dict]]) -> list[str]:
    """The issue's table: one row per (size, topology) file named ``<size>-<topology>``."""
    out = ["| size | topology | chip | population split / chips | peak MiB / chip (% HBM) | flops / gen / chip | "
           "roofline ms / gen | <= individuals/s | collectives MiB / chip / gen | compile s | result |",
           "|" + "---|" * 11]
    for name, r in sorted(results, key=lambda item: _table_order(item[0])):
        size, _, rest = name.partition("-")
        if size not in SIZES or not re.fullmatch(r"v\d+[a-z]*-\d+x\d+(x\d+)?|h[12]00-\d+", rest):
            continue  # other experiments (odd device counts, older programs): the tables above
        head = f"| {SIZES[size]} | {r['topology']} | {r['device_kind']} | {r['mesh_devices']}/{r['topology_devices']} |"
        if not r["ok"]:
            out.append(head + f" - | - | - | - | - | {r.get('compile_s') or 0:.0f} | {r['error'][:160]} |")
            continue
        m, hbm = r["memory"], r.get("hbm_per_device_bytes")
        peak = "-" if not m else (f"{mib(m['peak_estimate_bytes'])}" +
                                  (f" ({100 * m['peak_estimate_bytes'] / hbm:.1f}%)" if hbm else ""))
        gen, _ = generation(r)
        roof = r.get("roofline")
        cb = (r.get("hlo") or {}).get("collective_bytes")
        out.append(head + f" {peak} | {gen['flops']:.3g} |" if gen else head + f" {peak} | - |")
        out[-1] += (f" {roof['seconds_per_generation'] * 1e3:.3g} ({roof['bound']}) | {roof['individuals_per_s']:.3g} |"
                    if roof else " - | - |")
        out[-1] += f" {mib(cb['total']) if cb else '-'} | {r['compile_s']:.0f} | ok |"
    return out


def _load(paths: list[str]) -> list[tuple[str, dict]]:
    results = []
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        results += [(os.path.splitext(os.path.basename(p))[0], r) for r in (res if isinstance(res, list) else [res])
                    if "topology" in r]  # (not device_check outputs)
    return results


def write_readme(readme: str, table: list[str]) -> None:
    """Put the size table between README.md's ``<!-- size table -->`` markers."""
    with open(readme) as f:
        text = f.read()
    head, sep, rest = text.partition("<!-- size table -->\n")
    _, sep2, tail = rest.partition("<!-- /size table -->")
    if not sep or not sep2:
        raise SystemExit(f"{readme}: no <!-- size table --> ... <!-- /size table --> markers")
    with open(readme, "w") as f:
        f.write(head + sep + "\n".join(table) + "\n" + sep2 + tail)


def main(paths: list[str]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if paths[:1] == ["--write-readme"]:  # the size table into README.md (from every JSON here)
        results = _load(sorted(glob.glob(os.path.join(here, "*.json"))))
        write_readme(os.path.join(here, "README.md"), size_table(results))
        return
    results = _load(paths or sorted(glob.glob(os.path.join(here, "*.json"))))
    print("| file | topology | compiled | models | N/B/k | mesh/devices | args MiB | temp MiB | code MiB | "
          "peak MiB | flops | compile s | HLO / result |")
    print("|" + "---|" * 13)
    for name, r in results:
        print(row(name, r))
    print()
    print("| file | topology | flops / generation / chip | MiB accessed / generation / chip | precision | "
          "compute ms | compute ms (bf16) | HBM ms | <= individuals/s | note |")
    print("|" + "---|" * 10)
    for name, r in results:
        line = roofline_row(name, r)
        if line:
            print(line)
    print()
    print("\n".join(size_table(results)))


if __name__ == "__main__":
    main(sys.argv[1:])
