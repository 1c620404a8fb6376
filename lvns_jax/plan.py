"""``lvns plan``: compile one generation ahead of time for a TPU topology or N GPUs, on this (CPU) machine.

With ``libtpu`` installed (``pip install -e '.[tpu]'``; no TPU needed), XLA:TPU compiles for a named
topology (``v5e:2x4``, ``v5e:2x2``, ``v4:2x2x1``, ...) against *compile-only* devices
(:func:`jax.experimental.topologies.get_topology_desc`). :func:`plan` assembles the search a config
describes over those devices (the same population mesh as ``lvns run``), builds abstract arguments
(:class:`jax.ShapeDtypeStruct` with the very shardings :mod:`lvns_jax.distributed` gives a run:
individual-axis arrays ``P("pop")``, keys/counters/model parameters replicated), lowers and compiles
the jitted generation step (or a ``run_block`` scan) and reports, per device:

* memory (``compiled.memory_analysis()``): argument, output, alias, temporaries, generated code;
* cost (``compiled.cost_analysis()``): flops, bytes accessed, XLA's optimal seconds; a loop body
  (``lax.scan`` over chunks, ``run_block``'s scan) is counted ONCE, not once per iteration;
* what the optimized HLO (``compiled.as_text()``) contains: float64 ops, host callbacks,
  collectives, sorts, while loops;
* lowering and compile seconds;
* per generation (:func:`per_generation`): flops and bytes with the chunked decode/embed ``lax.map``
  counted ``chunks`` times (one chunk's :func:`lvns_jax.individuals.evaluate_chunk` compiled alone,
  times ``chunks - 1``, added; XLA:TPU's HLO has no ``known_trip_count`` to read), and a roofline
  (:func:`roofline`): seconds per generation = max(flops / peak FLOP/s, bytes / HBM bandwidth) from
  the chip's public peaks (:data:`PEAKS`; ``precision = float32`` at 1/6 of the bf16 peak on TPU),
  and individuals per second. Other loops (kNN blocks, emitter steps) are still counted once.

:func:`plan_auto_chunk` (``--chunk-size auto``) compiles for ``chunk_size`` candidates, largest
first, until the per-device peak fits in a margin of the HBM.

GPUs (``--topology h100:8``, ``h100:1``, ``h200:8``): with JAX's CUDA plugin (``pip install -e
'.[cuda]'`` in a separate venv; no GPU needed), XLA:GPU compiles against compile-only devices of
``N`` GPUs of one host, described by an XLA target config (:data:`GPU_SPECS`, ``lvns_jax/gpu_specs``),
with the same mesh and shardings (any device count: the odd-count rule is XLA:TPU's). XLA:GPU's
compile-only executables have no ``cost_analysis()``: flops and bytes come from :func:`hlo_cost`
(the optimized HLO, cuDNN convolutions and cuBLAS gemms counted from their shapes); CUB's radix sort
is turned off (:data:`GPU_COMPILE_OPTIONS`); "generated code" is 0 (XLA:GPU does not report it).

Nothing is run and nothing is allocated on any device: model parameters are materialised on the host
(to know their shapes) and then replaced by shapes. A config that XLA:TPU rejects (the default VGGish
front end's float64 FFT) is reported as one line, not a traceback.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
from typing import Any

from lvns_jax.errors import LvnsError

#: Nominal HBM per device (GiB) by ``device_kind`` (public specs; compile-only devices report none).
HBM_GIB = {"TPU v5 lite": 16, "TPU v4": 32, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32, "TPU v3": 16,
           "TPU v2": 8, "TPU v4 lite": 8}

#: Public per-chip peak figures by ``device_kind``, for the roofline estimate (:func:`roofline`):
#: dense bf16 matmul FLOP/s, HBM bytes/s, HBM bytes; GPUs also float32 without tensor cores
#: (``fp32``) and TF32 tensor cores (``tf32``, dense). Sources (vendor spec pages, 2026):
#: v5e, v5p, v6e, v4: Google Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v5e,
#: /v5p, /v6e, /v4: "Peak compute per chip (bf16)", "HBM bandwidth", "HBM capacity");
#: H100 SXM, H200 SXM: NVIDIA datasheets (BF16 tensor core 1979 TFLOP/s *with sparsity* = 989 dense;
#: FP32 67 TFLOP/s; TF32 989 with sparsity = 494 dense; HBM3 3.35 TB/s, 80 GB; H200: HBM3e 4.8 TB/s,
#: 141 GB). These are peaks: real programs reach a fraction of them.
PEAKS = {
    "TPU v5 lite": {"chip": "TPU v5e", "bf16": 197e12, "hbm_bw": 819e9, "hbm": 16 * 2**30},
    "TPU v5": {"chip": "TPU v5p", "bf16": 459e12, "hbm_bw": 2765e9, "hbm": 95 * 2**30},
    "TPU v5p": {"chip": "TPU v5p", "bf16": 459e12, "hbm_bw": 2765e9, "hbm": 95 * 2**30},
    "TPU v6 lite": {"chip": "TPU v6e", "bf16": 918e12, "hbm_bw": 1640e9, "hbm": 32 * 2**30},
    "TPU v4": {"chip": "TPU v4", "bf16": 275e12, "hbm_bw": 1200e9, "hbm": 32 * 2**30},
    "NVIDIA H100 80GB HBM3": {"chip": "H100 SXM", "bf16": 989e12, "fp32": 67e12, "tf32": 494e12,
                              "hbm_bw": 3350e9, "hbm": 80 * 10**9},
    "NVIDIA H200": {"chip": "H200 SXM", "bf16": 989e12, "fp32": 67e12, "tf32": 494e12,
                    "hbm_bw": 4800e9, "hbm": 141 * 10**9},
    # the device_kind of h200.txtpb's compile-only devices
    "NVIDIA H200 141GB HBM3e": {"chip": "H200 SXM", "bf16": 989e12, "fp32": 67e12, "tf32": 494e12,
                                "hbm_bw": 4800e9, "hbm": 141 * 10**9},
}

#: float32 matmuls at ``lax.Precision.HIGHEST`` (``precision = float32``) on a TPU's MXU are
#: emulated with 6 bf16 passes (bf16x6): about 1/6 of the bf16 peak.
TPU_F32_HIGHEST_PASSES = 6

NO_LIBTPU = ("lvns plan needs libtpu (XLA's TPU compiler; no TPU needed): "
             "pip install -e '.[tpu]'  (or: pip install 'jax[tpu]==<your jax version>')")

NO_CUDA = ("lvns plan --topology h100:N needs JAX's CUDA plugin (XLA's GPU compiler; no GPU needed), in a "
           "separate venv: python3 -m venv .venv-cuda && .venv-cuda/bin/pip install -e '.[cuda]'")

#: GPU models ``--topology MODEL:N`` compiles for: XLA GpuTargetConfigProto text files in
#: ``lvns_jax/gpu_specs`` (openxla/xla ``xla/backends/gpu/target_config/specs``, Apache-2.0).
GPU_SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}

#: GpuDeviceInfoProto fields of those spec files that jaxlib 0.10.2 does not know (dropped, then retried).
NEWER_SPEC_FIELDS = ("collective_memory_granularity",)

#: XLA options for compiling to compile-only GPU devices: XLA:GPU's CUB radix sort (large sorts and
#: top-k) asks the CUDA runtime for its scratch size at compile time ("cudaErrorInvalidDevice: invalid
#: device ordinal" without a GPU), so XLA's own sort is compiled instead (a real GPU run uses CUB).
GPU_COMPILE_OPTIONS = {"xla_gpu_enable_cub_radix_sort": False}

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast")


class PlanError(LvnsError):
    """``lvns plan`` cannot start (libtpu missing, unknown topology)."""


def libtpu_available() -> bool:
    """True if the ``libtpu`` package (XLA:TPU's compiler) is importable."""
    return importlib.util.find_spec("libtpu") is not None


def cuda_plugin_available() -> bool:
    """True if JAX's CUDA plugin (``jax-cuda12-plugin``: XLA:GPU's compiler) is importable."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except (ImportError, ValueError):
        return False


def gpu_topology(topology: str) -> tuple[str, int] | None:
    """``"h100:8"`` -> ``("h100", 8)``: a GPU model of :data:`GPU_SPECS` and a GPU count; None for
    anything else (a TPU topology). PlanError for a GPU model with a bad count."""
    name, _, count = topology.strip().lower().partition(":")
    if name not in GPU_SPECS:
        return None
    if not count.isdigit() or int(count) < 1:
        raise PlanError(f"--topology {topology!r}: expected {name}:N, N GPUs (e.g. {name}:1, {name}:8)")
    return name, int(count)


def gpu_target_config(name: str) -> str:
    """The GpuTargetConfigProto text of a GPU model (``lvns_jax/gpu_specs``, from openxla/xla)."""
    from importlib.resources import files

    return files("lvns_jax").joinpath("gpu_specs", GPU_SPECS[name]).read_text()


def drop_fields(text: str, fields: tuple[str, ...]) -> str:
    """A text proto without the scalar fields / blocks named ``fields`` (at any depth)."""
    out, depth_skip = [], 0
    for line in text.splitlines():
        if depth_skip:
            depth_skip += line.count("{") - line.count("}")
            continue
        m = re.match(r"\s*(\w+)\s*[:{]", line)
        if m and m.group(1) in fields:
            depth_skip = line.count("{") - line.count("}")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def gpu_devices(topology: str, name: str, count: int) -> list:
    """The compile-only devices of ``count`` GPUs of model ``name`` (one host), from XLA:GPU's
    topology for the model's target config; PlanError in one line if the CUDA plugin is missing."""
    if not cuda_plugin_available():
        raise PlanError(NO_CUDA)
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no GPU, no CUDA driver: nothing to check
    from jax.experimental import topologies

    text = gpu_target_config(name)
    err = None
    # the fields jaxlib 0.10.2 refuses are dropped first; a jaxlib that wants them gets the whole text
    for spec in (drop_fields(text, NEWER_SPEC_FIELDS), text):
        try:
            desc = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=spec,
                                                topology=f"1x1x{count}")
            return list(desc.devices)
        except Exception as e:  # noqa: BLE001 - XLA's errors are RuntimeErrors of several kinds
            err = e
    raise PlanError(f"--topology {topology!r}: {_first_line(err)}")


def topology_devices(topology: str) -> list:
    """The compile-only devices of a TPU topology such as ``"v5e:2x4"``, or of ``N`` GPUs such as
    ``"h100:8"`` (PlanError in one line if libtpu / the CUDA plugin is missing or the name is not a
    topology)."""
    gpu = gpu_topology(topology)
    if gpu is not None:
        return gpu_devices(topology, *gpu)
    if not libtpu_available():
        raise PlanError(NO_LIBTPU)
    _compile_only_env()
    from jax.experimental import topologies

    try:
        try:
            desc = topologies.get_topology_desc(topology, platform="tpu")
        except Exception as e:  # noqa: BLE001
            bounds = _sub_host_bounds(topology)
            if "chips_per_host_bounds" not in str(e) or bounds is None:
                raise
            # smaller than one host (v5e:1x1, v5e:1x2, v6e:1x1): a host of just these chips
            desc = topologies.get_topology_desc(topology, platform="tpu", chips_per_host_bounds=bounds)
    except Exception as e:  # noqa: BLE001 - XLA's errors are RuntimeErrors of several kinds
        raise PlanError(f"--topology {topology!r}: {_first_line(e)} (expected e.g. v5e:2x4, v5e:2x2, "
                        f"v4:2x2x1, v5p:2x2x1, v6e:2x4)") from None
    return list(desc.devices)


def _sub_host_bounds(topology: str) -> tuple[int, int, int] | None:
    """``"v5e:1x2"`` -> ``(1, 2, 1)``: the topology's own chip grid as a host's
    ``chips_per_host_bounds``, for topologies inside the default host (2x2x1); None otherwise (no
    ``AxB[xC]`` grid, or larger: ``v5e:3x7`` stays an error)."""
    m = re.fullmatch(r"[^:]+:(\d+(?:x\d+){1,2})", topology.strip())
    if not m:
        return None
    dims = [int(d) for d in m.group(1).split("x")]
    dims += [1] * (3 - len(dims))
    if not all(1 <= d <= b for d, b in zip(dims, (2, 2, 1))):  # not inside one default host: a real error
        return None
    return tuple(dims)  # type: ignore[return-value]


def _compile_only_env() -> None:
    """Environment for loading libtpu as a compiler only, on a machine without TPU chips: several
    processes may load it at once (no chip is opened), and its start-up probes of the Cloud TPU
    metadata (worker hostnames, accelerator type: lines of warnings on stderr, nothing else) are
    answered. The topology compiled for is the one named, not this accelerator type."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax._src import hardware_utils

        chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except Exception:  # noqa: BLE001 - private helper; assume a TPU VM if it is gone
        chips = 1
    if chips == 0 and not any(v in os.environ for v in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE")):
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # jax sets it itself when it finds no chip
        os.environ.update(TPU_WORKER_HOSTNAMES="localhost", TPU_ACCELERATOR_TYPE="v5litepod-8")


def compile_options(device) -> dict[str, Any] | None:
    """``Lowered.compile`` options for a compile-only ``device``: :data:`GPU_COMPILE_OPTIONS` on GPU."""
    return dict(GPU_COMPILE_OPTIONS) if device.platform == "gpu" else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:400]


# ----------------------------------------------------------------------------- abstract arguments
def abstract_args(search, devices=None) -> tuple[Any, Any]:
    """``(search, state)`` with every array replaced by a :class:`jax.ShapeDtypeStruct` carrying the
    sharding a run gives it on ``search.mesh`` (nothing is allocated on any device). Without a mesh
    (one device) everything goes on ``devices[0]`` (default: the first running device)."""
    import jax
    from jax.sharding import NamedSharding, SingleDeviceSharding

    from lvns_jax import distributed

    zeros = jax.eval_shape(search._zeros)  # shapes only: template() would allocate on the default devices
    knn = jax.eval_shape(search.scorer.derive, zeros.embeddings)
    state = zeros.replace(knn=knn)
    mesh = search.mesh
    if mesh is None:  # one device: everything on the topology's first device
        dev = (list(devices) if devices is not None else jax.devices())[0]
        sds = lambda a, spec: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(dev))  # noqa: E731
    else:
        sds = lambda a, spec: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec))  # noqa: E731
    state, models = distributed._map_state(state, search.models, sds)
    return search.replace(models=models), state


# ----------------------------------------------------------------------------- HLO scan
_OP = re.compile(r"=\s*(?:\([^=]*?\)|[^\s=]+)\s+([a-z][a-z0-9\-]*)\(")
_COMMENT = re.compile(r"/\*.*?\*/")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")


def _type_bytes(text: str) -> int:
    """Bytes of an HLO result type such as ``(f32[8,64]{1,0}, s32[])``."""
    n = 0
    for dtype, dims in _SHAPE.findall(text):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        n += size * _DTYPE_BYTES.get(dtype, 4)
    return n


def collective_bytes(text: str) -> dict[str, Any]:
    """Bytes each device receives from the collectives of an optimized HLO module, by kind: the
    result size of every synchronous collective and of every asynchronous one's ``-done`` (a
    ``-start``'s tuple holds its operand too). ``in_loop_bodies`` is the part inside while-loop
    bodies, counted once like ``cost_analysis()`` does (a loop's trip count is not in the text)."""
    by_kind: dict[str, int] = {}
    comp, bodies, rows = None, set(), []
    for line in text.splitlines():
        line = _COMMENT.sub("", line)
        bodies.update(_BODY.findall(line))
        m = _COMPUTATION.match(line)
        if m and "=" not in line.split("{")[0]:
            comp = m.group(1)
            continue
        m = _OP.search(line)
        if not m:
            continue
        op = m.group(1)
        kind = op[:-len("-done")] if op.endswith("-done") else op
        if kind not in COLLECTIVES:
            continue
        result = line.split("=", 1)[1]
        rows.append((kind, comp, _type_bytes(result[: result.index(" " + op + "(")])))
    for kind, _, b in rows:
        by_kind[kind] = by_kind.get(kind, 0) + b
    return {"by_kind": by_kind, "total": sum(by_kind.values()),
            "in_loop_bodies": sum(b for _, comp, b in rows if comp in bodies)}


def scan_hlo(text: str) -> dict[str, Any]:
    """What an optimized HLO module contains: op counts of interest and warnings."""
    ops: dict[str, int] = {}
    f64_ops: dict[str, int] = {}
    host_transfers = 0
    for line in text.splitlines():
        m = _OP.search(_COMMENT.sub("", line))
        if not m:
            continue
        op = m.group(1)
        ops[op] = ops.get(op, 0) + 1
        if op in ("send", "recv") and "is_host_transfer=true" in line:  # (not their -done halves)
            host_transfers += 1
        if "f64[" in line or "c128[" in line:  # (an f64 -> c128 RFFT prints only its c128 result)
            f64_ops[op] = f64_ops.get(op, 0) + 1
    collectives = {}
    for c in COLLECTIVES:
        n = ops.get(c, 0) + ops.get(c + "-start", 0)
        if n:
            collectives[c] = n
    targets: dict[str, int] = {}
    for t in _TARGET.findall(text):
        targets[t] = targets.get(t, 0) + 1
    host = {t: n for t, n in targets.items() if "callback" in t.lower() or "host" in t.lower()}
    host_transfers += ops.get("infeed", 0) + ops.get("outfeed", 0)
    out = {"f64_ops": f64_ops, "host_callbacks": host, "host_transfers": host_transfers,
           "collectives": collectives, "collectives_total": sum(collectives.values()),
           "sorts": ops.get("sort", 0), "while_loops": ops.get("while", 0), "custom_calls": targets,
           "fusions": ops.get("fusion", 0), "instructions": sum(ops.values()),
           "collective_bytes": collective_bytes(text)}
    warnings = []
    if f64_ops:
        warnings.append(f"float64 ops: {sum(f64_ops.values())} ({', '.join(sorted(f64_ops))}): "
                        f"XLA:TPU has no float64 FFT and emulates float64 arithmetic slowly")
    if host or host_transfers:
        warnings.append(f"host callbacks/transfers: {sum(host.values()) + host_transfers} "
                        f"({', '.join(sorted(host)) or 'send/recv/infeed/outfeed'}): a device-host round trip per call")
    if out["sorts"]:
        warnings.append(f"sorts: {out['sorts']} (top-k / median): cost grows as n log n (global permutations, "
                        f"selection, medians: replicated on every device)")
    out["warnings"] = warnings
    return out


# ----------------------------------------------------------------------------- compile
def _failure(e: BaseException, mesh_devices: int = 1, even: list[int] | None = None, target: str = "TPU") -> str:
    text = str(e)
    if target != "TPU":
        return f"does not compile for {target}: {_first_line(e)}"
    if "replica_groups" in text and "odd" in text:
        hint = (f"devices={max(even)}" if even else
                "container_size and breed_size with an even common divisor")
        return (f"does not compile for TPU: the population is split over {mesh_devices} devices, an odd count, and "
                f"XLA:TPU does not implement all-reduce over odd replica groups (> 1); use {hint} "
                f"(an even count dividing container_size and breed_size) or sizes divisible by the topology's devices")
    if "FFT" in text and "f64" in text:
        return ("does not compile for TPU: float64 FFT in the VGGish front end (XLA:TPU: 'Unexpected operand "
                "type for FFT: f64'); use frontend_precision = auto or float32 (the float32 front end), or a PANNs "
                "embedder")
    return f"does not compile for TPU: {_first_line(e)}"


def _memory(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes", "host_argument_size_in_bytes", "host_output_size_in_bytes",
              "host_temp_size_in_bytes", "host_generated_code_size_in_bytes")
    out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(m, f, 0) or 0) for f in fields}
    # live at once on a device, at worst: arguments + outputs (less those aliased onto arguments)
    # + temporaries + code
    out["peak_estimate_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] +
                                  out["temp_bytes"] + out["generated_code_bytes"])
    return out


def _cost(compiled) -> dict[str, float] | None:
    try:
        c = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    if not c:
        return None
    keep = {"flops": "flops", "bytes accessed": "bytes_accessed", "transcendentals": "transcendentals",
            "optimal_seconds": "optimal_seconds"}
    out = {name: float(c[k]) for k, name in keep.items() if k in c}
    if out.get("optimal_seconds", 0.0) < 0:  # XLA:TPU reports negative values for some programs: unknown
        out["optimal_seconds"] = None
    return out


def program_cost(compiled) -> dict[str, Any] | None:
    """:func:`_cost` of a compiled program; where the backend has none (XLA:GPU's compile-only
    executables: ``cost_analysis()`` is None), :func:`hlo_cost` of its optimized HLO."""
    c = _cost(compiled)
    if c is not None:
        return {**c, "source": "compiled.cost_analysis()"}
    try:
        return hlo_cost(compiled)
    except Exception:  # noqa: BLE001 - an estimate, never fatal
        return None


def hlo_cost(compiled) -> dict[str, Any]:
    """Per-device cost of a compiled program from its optimized (SPMD-partitioned) HLO module: XLA's
    generic ``HloCostAnalysis`` (as the CPU backend runs it), which counts a custom call as -1 flop
    and -1 byte, corrected by :func:`custom_call_cost` for the cuDNN convolutions and cuBLAS gemms
    XLA:GPU rewrites convolutions and dots into (other custom calls: ``uncounted_custom_calls``)."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    mods = compiled.runtime_executable().hlo_modules()
    c = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), mods[0])
    extra = custom_call_cost(compiled.as_text())
    n = extra["custom_calls"]  # each counted as -1 flop / -1 byte by HloCostAnalysis
    return {"flops": float(c["flops"]) + n + extra["flops"],
            "bytes_accessed": float(c["bytes accessed"]) + n + extra["bytes_accessed"],
            "transcendentals": float(c.get("transcendentals", 0.0)),
            "source": "HloCostAnalysis of the optimized HLO + cuDNN conv / cuBLAS gemm custom calls from their shapes",
            "uncounted_custom_calls": extra["uncounted"]}


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|[^\s=]+)\s+[a-z][a-z0-9\-]*\(")
_DIMS = re.compile(r"(?:pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")


def _dims(type_text: str) -> list[int]:
    """The dimensions of the first array in an HLO type (``(f32[30,64]{1,0}, u8[0])`` -> [30, 64])."""
    m = _DIMS.search(type_text)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def custom_call_cost(text: str) -> dict[str, Any]:
    """Flops and bytes (operands + results) of an optimized HLO module's custom calls, by shape:
    ``__cudnn$conv*`` 2 x output elements x kernel elements / output features (``dim_labels``),
    ``__cublas$*`` 2 x output elements x the lhs contracting size; other targets are only counted
    (``uncounted``, by target). Loop bodies are counted once, like ``cost_analysis()``."""
    types, calls = {}, []
    for line in text.splitlines():
        line = _COMMENT.sub("", line)
        m = _DEF.match(line)
        if not m:
            continue
        types[m.group(1)] = m.group(2)
        if " custom-call(" in line:
            calls.append((m.group(2), line))
    flops = nbytes = 0.0
    uncounted: dict[str, int] = {}
    for result, line in calls:
        target = (_TARGET.findall(line) or ["?"])[0]
        args = line.split(" custom-call(", 1)[1].split(")", 1)[0]
        ops = [types.get(a.strip().lstrip("%"), "") for a in args.split(",") if a.strip()]
        out = math.prod(_dims(result))
        labels = re.search(r"dim_labels=\w+_(\w+)->", line)
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
        if target.startswith("__cudnn$conv") and labels and len(ops) > 1:
            kernel = _dims(ops[1])
            o = labels.group(1).find("o")
            flops += 2.0 * out * math.prod(kernel) / max(kernel[o] if 0 <= o < len(kernel) else 1, 1)
        elif target.startswith("__cublas$") and contracting and ops:
            lhs = _dims(ops[0])
            k = math.prod(lhs[int(d.strip('" '))] for d in contracting.group(1).split(",") if d.strip('" '))
            flops += 2.0 * out * k
        else:
            uncounted[target] = uncounted.get(target, 0) + 1
            continue
        nbytes += _type_bytes(result) + sum(_type_bytes(t) for t in ops)
    return {"flops": flops, "bytes_accessed": nbytes, "custom_calls": len(calls), "uncounted": uncounted}


# ----------------------------------------------------------------------------- per generation, roofline
def peak_flops(kind: str, precision: str) -> tuple[float, str] | None:
    """(FLOP/s, how it was taken) of a ``device_kind``'s matmul peak for the config's ``precision``
    (float32 | bfloat16 | default); None for a kind not in :data:`PEAKS`."""
    p = PEAKS.get(kind)
    if p is None:
        return None
    if kind.startswith("TPU"):
        if precision == "float32":
            n = TPU_F32_HIGHEST_PASSES
            return p["bf16"] / n, f"float32 at HIGHEST: bf16x{n} passes, 1/{n} of {p['bf16'] / 1e12:.0f} TFLOP/s bf16"
        return p["bf16"], (f"bf16 peak ({'default precision: one bf16 pass' if precision == 'default' else 'bfloat16'})")
    if precision == "float32":
        return p["fp32"], "float32 at HIGHEST: FP32 without tensor cores"
    if precision == "default":
        return p["tf32"], "default precision: TF32 tensor cores (dense)"
    return p["bf16"], "bf16 tensor cores (dense)"


def roofline(flops: float | None, bytes_accessed: float | None, kind: str, precision: str,
             individuals: int) -> dict[str, Any] | None:
    """Seconds per generation = max(flops / peak FLOP/s, bytes / HBM bytes/s) of one device (each
    device does its share of the generation at once), and ``individuals`` (the children a
    generation evaluates) per second. A lower bound on the time: every flop is taken at the matmul
    peak (elementwise work, FFTs, sorts and collectives are slower or not counted) and every byte at
    the HBM peak."""
    pk = peak_flops(kind, precision)
    if pk is None or flops is None or bytes_accessed is None:
        return None
    pf, how = pk
    bw = PEAKS[kind]["hbm_bw"]
    compute_s, memory_s = flops / pf, bytes_accessed / bw
    t = max(compute_s, memory_s)
    return {"chip": PEAKS[kind]["chip"], "precision": precision, "peak_flops_per_s": pf, "peak_flops_note": how,
            "hbm_bytes_per_s": bw, "compute_s": compute_s, "memory_s": memory_s, "seconds_per_generation": t,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "individuals_per_s": individuals / t if t > 0 else None}


def chunk_maps(cfg, mesh_devices: int) -> list[dict[str, int]]:
    """The step's chunked decode+embed maps (:func:`lvns_jax.individuals.evaluate`): per device,
    ``individuals``, ``chunks`` (the ``lax.map`` trip count) and ``chunk`` (individuals per chunk):
    the children, and the container when ``reevaluate_container``."""
    from lvns_jax import individuals

    maps = [("children", cfg.breed_size)] + ([("container", cfg.container_size)] if cfg.reevaluate_container else [])
    out = []
    for name, b in maps:
        local = b // mesh_devices
        n = individuals.num_chunks(local, cfg.chunk_size)
        out.append({"map": name, "individuals": local, "chunks": n, "chunk": -(-local // n)})
    return out


def chunk_cost(search, abs_search, device, chunk: int) -> dict[str, Any]:
    """XLA's cost of one chunk's decode+embed (:func:`lvns_jax.individuals.evaluate_chunk` on
    ``chunk`` individuals), compiled on its own for one ``device`` (compile-only devices work)."""
    import jax
    from jax.sharding import SingleDeviceSharding

    from lvns_jax import individuals

    one = SingleDeviceSharding(device)
    models = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abs_search.models)
    c, t = search.latent_shape
    z = jax.ShapeDtypeStruct((chunk, c, t), jax.numpy.float32, sharding=one)
    k = jax.eval_shape(lambda: individuals.stream(jax.random.split(jax.random.key(0), chunk), individuals.NOISE))
    keys = jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=one)
    t0 = time.perf_counter()
    compiled = jax.jit(individuals.evaluate_chunk).lower(models, z, keys).compile(compile_options(device))
    return {**(program_cost(compiled) or {}), "compile_s": time.perf_counter() - t0}


def per_generation(cost: dict[str, Any] | None, maps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Flops and bytes of one generation on one device: the compiled program's (each loop body
    counted once) plus ``chunks - 1`` more of each chunked map's one-chunk cost (``maps`` entries
    carrying ``flops`` / ``bytes_accessed`` where ``chunks > 1``)."""
    if not cost or cost.get("flops") is None or cost.get("bytes_accessed") is None:
        return None
    flops, nbytes = cost["flops"], cost["bytes_accessed"]
    for m in maps:
        if m["chunks"] > 1:
            if m.get("flops") is None or m.get("bytes_accessed") is None:
                return None
            flops += (m["chunks"] - 1) * m["flops"]
            nbytes += (m["chunks"] - 1) * m["bytes_accessed"]
    return {"flops": flops, "bytes_accessed": nbytes}


def plan(cfg, topology: str, block: int = 0, stop_check: bool = False, search=None,
         hbm_bytes: int | None = None) -> dict[str, Any]:
    """Compile one generation of ``cfg``'s search (``block > 0``: a ``run_block`` of that many
    generations; ``stop_check``: with the host stop check a one-process ``lvns run`` compiles in, an
    ``io_callback`` per generation) for a TPU ``topology``; a JSON-able dict (``ok`` False and ``error``
    one line if XLA rejects the program). PlanError if libtpu is missing or the topology unknown."""
    import jax

    from lvns_jax import distributed
    from lvns_jax import search as search_lib
    from lvns_jax.assemble import assemble

    if stop_check and not block:
        raise PlanError("--stop-check needs --block G (the stop check is inside run_block)")
    devices = topology_devices(topology)
    t0 = time.perf_counter()
    if search is None:
        search = assemble(cfg, devices=devices)
    build_s = time.perf_counter() - t0
    kind = devices[0].device_kind
    gpu = devices[0].platform != "tpu"
    mesh_devices = distributed.shards(search.mesh)
    out: dict[str, Any] = {
        "topology": topology, "device_kind": kind, "topology_devices": len(devices), "mesh_devices": mesh_devices,
        "function": (f"run_block({block}{', stop check' if stop_check else ''})" if block else "step"),
        "config": {"rave": cfg.rave, "embedder": cfg.embedder, "container_size": cfg.container_size,
                   "breed_size": cfg.breed_size, "k": cfg.k, "latent": [cfg.latent_channels, cfg.latent_frames],
                   "chunk_size": cfg.chunk_size, "knn": cfg.knn, "archive": cfg.archive,
                   "emitter": type(search.emitter).__name__, "reevaluate_container": cfg.reevaluate_container,
                   "precision": cfg.precision},
        "models": list(search.models.description), "jax": jax.__version__, "libtpu": _libtpu_version(),
        "cuda_plugin": _version("jax-cuda12-plugin") if gpu else None,
        "hbm_per_device_bytes": hbm_bytes or hbm_of(kind),
        "compile_options": compile_options(devices[0]), "build_s": build_s, "ok": False, "error": None,
    }
    abs_search, abs_state = abstract_args(search, devices)
    if mesh_devices > 1 and mesh_devices % 2 and not gpu:
        logging.getLogger("lvns_jax").warning(
            "lvns plan: the population is split over %d devices, an odd count: XLA:TPU (libtpu 0.0.42.1) "
            "refuses all-reduces over odd replica groups, after compiling for minutes; set devices= to an "
            "even divisor of container_size and breed_size", mesh_devices)
    try:
        t0 = time.perf_counter()
        if block:
            lowered = search_lib.run_block.lower(abs_search, abs_state, block,
                                                 search_lib._no_stop if stop_check else None)
        else:
            lowered = search_lib.step.lower(abs_search, abs_state)
        out["lower_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = lowered.compile(compile_options(devices[0]))
        out["compile_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - XLA's compile errors: reported, not raised
        if os.environ.get("LVNS_DEBUG"):
            raise
        out["compile_s" if "lower_s" in out else "lower_s"] = time.perf_counter() - t0  # until it gave up
        g = math.gcd(cfg.container_size, cfg.breed_size)
        even = [d for d in range(2, len(devices) + 1, 2) if g % d == 0]
        out["error"] = _failure(e, mesh_devices, even, "GPU" if gpu else "TPU")
        return out
    out["ok"] = True
    out["memory"] = _memory(compiled)
    out["cost"] = program_cost(compiled)
    out["hlo"] = scan_hlo(compiled.as_text())
    out["warnings"] = list(out["hlo"].pop("warnings"))
    # per generation: XLA counts the chunk loop's body once; one chunk is costed alone and multiplied
    maps = chunk_maps(cfg, mesh_devices)
    costed: dict[int, dict[str, Any]] = {}
    for m in maps:
        if m["chunks"] > 1:
            if m["chunk"] not in costed:
                try:
                    costed[m["chunk"]] = chunk_cost(search, abs_search, devices[0], m["chunk"])
                except Exception as e:  # noqa: BLE001 - an estimate, never fatal
                    costed[m["chunk"]] = {"error": _first_line(e)}
            m.update({k: v for k, v in costed[m["chunk"]].items() if k in ("flops", "bytes_accessed", "compile_s", "error")})
    gen = per_generation(out["cost"], maps)
    loops_corrected = sum(1 for m in maps if m["chunks"] > 1)
    out["per_generation"] = None if gen is None else {
        **gen, "maps": maps, "method": "compiled program + (chunks - 1) x one chunk compiled alone",
        "other_while_loops": max(out["hlo"]["while_loops"] - loops_corrected - (1 if block else 0), 0)}
    out["roofline"] = None if gen is None else roofline(gen["flops"], gen["bytes_accessed"], kind, cfg.precision,
                                                         cfg.breed_size)
    if out["per_generation"] and out["per_generation"]["other_while_loops"]:
        out["warnings"].append(f"{out['per_generation']['other_while_loops']} while loop(s) besides the decode/embed "
                               "chunk map (kNN blocks, emitter steps, ...) are counted once in the per-generation "
                               "flops/bytes: an underestimate")
    if gpu and out["hlo"]["sorts"]:
        out["warnings"].append("compiled with XLA's own sort (xla_gpu_enable_cub_radix_sort = false: CUB needs a GPU "
                               "at compile time); a run on a GPU uses CUB's radix sort for large sorts")
    mem, hbm = out["memory"], out["hbm_per_device_bytes"]
    if mem and hbm and mem["peak_estimate_bytes"] > 0.9 * hbm:
        out["warnings"].insert(0, f"per-device memory {_bytes(mem['peak_estimate_bytes'])} is over 90% "
                                  f"of the {_bytes(hbm)} HBM{'' if hbm_bytes else ' of a ' + kind}")
    if mesh_devices < len(devices):
        copies = (f": every chip of a v5e / v6e slice runs the program, {len(devices) // mesh_devices} copies of "
                  f"each part" if search.mesh is not None and search.mesh.size == len(devices) else "")
        out["warnings"].append(f"the population is split over {mesh_devices} of the topology's {len(devices)} "
                               f"devices (devices must divide container_size and breed_size){copies}")
    return out


def chunk_candidates(cfg, mesh_devices: int) -> list[int]:
    """``chunk_size`` values to try, largest first: the individuals per device of the largest
    chunked map (breed, or the container when it is re-evaluated) divided by 1, 2, 4, ... down to 1
    (each rounded up; only values giving a different chunking)."""
    local = max(m["individuals"] for m in chunk_maps(cfg.replace(chunk_size=1), mesh_devices))
    out, d = [], 1
    while True:
        c = max(1, -(-local // d))
        if not out or c < out[-1]:
            out.append(c)
        if c == 1:
            return out
        d *= 2


def plan_auto_chunk(cfg, topology: str, block: int = 0, stop_check: bool = False, hbm_bytes: int | None = None,
                    margin: float = 0.9) -> dict[str, Any]:
    """:func:`plan` with the largest ``chunk_size`` (of :func:`chunk_candidates`) whose compiled
    per-device peak (arguments + outputs - aliased + temporaries + code) is at most ``margin`` x
    ``hbm_bytes`` (default: the chip's HBM; injectable for tests). One compile per candidate tried,
    largest first, until one fits; the result is that compile's, with ``chunk_auto`` (the limit,
    every candidate tried and its peak, the choice: None if none fits, then the last result)."""
    from lvns_jax import distributed
    from lvns_jax.assemble import assemble

    devices = topology_devices(topology)
    search = assemble(cfg, devices=devices)
    mesh_devices = distributed.shards(search.mesh)
    kind = devices[0].device_kind
    limit = hbm_bytes or hbm_of(kind)
    if limit is None:
        raise PlanError(f"--chunk-size auto: no HBM size known for {kind!r}; give --hbm-limit")
    tried, res = [], None
    for c in chunk_candidates(cfg, mesh_devices):
        res = plan(cfg.replace(chunk_size=c), topology, block, stop_check, search=search.replace(chunk_size=c),
                   hbm_bytes=limit)
        peak = (res.get("memory") or {}).get("peak_estimate_bytes") if res["ok"] else None
        fits = peak is not None and peak <= margin * limit
        tried.append({"chunk_size": c, "ok": res["ok"], "peak_estimate_bytes": peak, "fits": fits,
                      "compile_s": res.get("compile_s")})
        if fits:
            break
    chosen = tried[-1]["chunk_size"] if tried[-1]["fits"] else None
    res["chunk_auto"] = {"hbm_bytes": limit, "margin": margin, "tried": tried, "chosen": chosen}
    if chosen is None:
        res.setdefault("warnings", []).insert(0, f"--chunk-size auto: no chunk_size fits in {margin:.0%} of "
                                                 f"{_bytes(limit)} per device (smallest tried: {tried[-1]['chunk_size']})")
    return res


def parse_bytes(text: str) -> int:
    """``"16GiB"``, ``"512MiB"``, ``"2e9"``, ``"80GB"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B|B)?\s*", text)
    if not m:
        raise PlanError(f"--hbm-limit: expected e.g. 16GiB, 512MiB, 80GB or bytes, got {text!r}")
    unit = m.group(2) or "B"
    scale = 1 if unit == "B" else (1024 if "i" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    return int(float(m.group(1)) * scale)


def _libtpu_version() -> str | None:
    return _version("libtpu")


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def hbm_of(kind: str) -> int | None:
    """Nominal HBM bytes of a ``device_kind`` (:data:`HBM_GIB` for TPUs, :data:`PEAKS` for GPUs); None if unknown."""
    if kind in HBM_GIB:
        return HBM_GIB[kind] * 2**30
    return PEAKS[kind]["hbm"] if kind in PEAKS and not kind.startswith("TPU") else None


# ----------------------------------------------------------------------------- table
def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _secs(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def table(res: dict[str, Any]) -> str:
    """A short human-readable summary of a :func:`plan` result."""
    c = res["config"]
    head = (f"lvns plan: {res['function']} for {res['topology']} ({res['device_kind']}, population over "
            f"{res['mesh_devices']} of {res['topology_devices']} devices)\n"
            f"  config: N={c['container_size']} B={c['breed_size']} k={c['k']} latent={c['latent'][0]}x{c['latent'][1]} "
            f"chunk={c['chunk_size']} knn={c['knn']} archive={c['archive']} emitter={c['emitter']}\n"
            f"  models: {' + '.join(res['models'])}")
    if not res["ok"]:
        return head + f"\n  {res['topology']}: {res['error']}"
    m, cost, h = res["memory"] or {}, res["cost"] or {}, res["hlo"]
    hbm = res.get("hbm_per_device_bytes")
    lines = [head, "  per device:"]
    rows = [("arguments", m.get("argument_bytes")), ("outputs", m.get("output_bytes")),
            ("aliased", m.get("alias_bytes")), ("temporaries", m.get("temp_bytes")),
            ("generated code", m.get("generated_code_bytes")), ("peak (estimate)", m.get("peak_estimate_bytes"))]
    for name, v in rows:
        extra = f"   ({100 * v / hbm:.2f}% of {_bytes(hbm)} HBM)" if name.startswith("peak") and hbm and v else ""
        lines.append(f"    {name:<16} {_bytes(v):>12}{extra}")
    flops = cost.get("flops")
    lines.append(f"    {'flops':<16} {flops:>12.3e}" if flops is not None else f"    {'flops':<16} {'-':>12}")
    lines.append(f"    {'bytes accessed':<16} {_bytes(cost.get('bytes_accessed')):>12}"
                 "   (loop bodies counted once)")
    gen, roof = res.get("per_generation"), res.get("roofline")
    if gen:
        loops = [f"{m['map']} {m['chunks']} x {m['chunk']}" for m in gen["maps"]]
        lines.append(f"  per generation (chunk maps, chunks x individuals: {', '.join(loops)}; loops > 1 counted back "
                     f"in from one chunk compiled alone): flops {gen['flops']:.3e}, bytes {_bytes(gen['bytes_accessed'])}")
    if roof:
        lines.append(f"  roofline ({roof['chip']}, {roof['peak_flops_per_s'] / 1e12:.1f} TFLOP/s: {roof['peak_flops_note']}; "
                     f"{roof['hbm_bytes_per_s'] / 1e9:.0f} GB/s HBM): compute {_secs(roof['compute_s'])}, memory "
                     f"{_secs(roof['memory_s'])} -> >= {_secs(roof['seconds_per_generation'])} per generation "
                     f"({roof['bound']} bound), <= {roof['individuals_per_s']:.4g} individuals/s")
    elif gen:
        lines.append(f"  roofline: no peak figures for {res['device_kind']!r} (lvns_jax.plan.PEAKS)")
    if res.get("chunk_auto"):
        a = res["chunk_auto"]
        tried = ", ".join(f"{t['chunk_size']}: {_bytes(t['peak_estimate_bytes'])}{'' if t['fits'] else ' (too big)'}"
                          for t in a["tried"])
        lines.append(f"  chunk_size auto (limit {a['margin']:.0%} of {_bytes(a['hbm_bytes'])}): "
                     f"{a['chosen'] if a['chosen'] is not None else 'none fits'} (tried {tried})")
    coll = ", ".join(f"{k} {v}" for k, v in h["collectives"].items()) or "none"
    lines.append(f"  HLO: {h['instructions']} instructions, {h['fusions']} fusions, {h['while_loops']} while loops, "
                 f"{h['sorts']} sorts; collectives: {coll}; f64 ops: {sum(h['f64_ops'].values())}; host callbacks: "
                 f"{sum(h['host_callbacks'].values()) + h['host_transfers']}")
    cb = h.get("collective_bytes")
    if cb and cb["total"]:
        kinds = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(cb["by_kind"].items(), key=lambda kv: -kv[1]))
        lines.append(f"  collective traffic received per device: {_bytes(cb['total'])} ({kinds}; "
                     f"{_bytes(cb['in_loop_bodies'])} of it in loop bodies, counted once)")
    lines.append(f"  lower {res['lower_s']:.1f} s, compile {res['compile_s']:.1f} s (build models {res['build_s']:.1f} s)")
    for w in res["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
