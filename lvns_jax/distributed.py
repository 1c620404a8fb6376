"""Scale-out: the population axis sharded over devices and hosts, with JAX's own runtime.

One 1-D :class:`jax.sharding.Mesh` with axis ``"pop"`` over ``devices`` devices (config key; 0 = all
devices, reduced to the largest count that divides both ``container_size`` and ``breed_size``).
The state's per-individual arrays (latents, embeddings, sparseness, birth generations, kNN lists)
are split along the individual axis (:class:`~jax.sharding.NamedSharding` ``P("pop")``); the PRNG key,
counters and model parameters are replicated. Inside the one jitted generation step:

* breeding runs under ``jit``'s automatic partitioning (its random draws are the same whatever the
  sharding: ``jax_threefry_partitionable``);
* decoding and embedding run on each device's slice of the children (``shard_map``) in
  ``chunk_size`` batches; every individual's noise comes from its own identity key
  (:mod:`lvns_jax.individuals`), so neither the device count nor ``chunk_size`` changes a draw;
* sparseness is computed over the global pool: each device all-gathers the embeddings (small:
  (N+B) x 128 floats) and computes the kNN of its own rows; distances are exact and
  shape-independent (:func:`lvns_jax.novelty.exact_sq_dist`), so every member's sparseness is the
  same to the last bit as on one device, and so are the survivors;
* selection (a top-k over the (N+B,) sparseness) and the gathers of the survivors are partitioned by
  XLA; the new state is constrained back to the same shardings.

So 1, 2, 4 or 8 devices select the same survivors in the same order (tested). Floats agree to the
last bits only: XLA fuses the partitioned program differently (e.g. FMA contraction in the
mutation's normal draw, the decoder's matmuls on a device's slice), so latents differ by ~1 ulp and
embeddings, sparseness and summed metrics to float tolerance; a member's sparseness, given its
embedding and the pool's, is bit-identical whatever the device count.

Multi-host
----------
With ``multihost = true`` (config key) the run calls :func:`jax.distributed.initialize` before any
other JAX call; every process runs the same program on its own devices, the mesh spans all devices
of all processes. Logging, TensorBoard, metrics, WAV files and the resolved config are written by
process 0 only; orbax checkpoints are written by all processes together (each its own shards) and
restore onto any device count (a checkpoint written on 8 devices continues on 1).

Launch commands (the configs are in ``experiments/configs/``; ``.venv/bin/lvns`` is ``lvns`` in the
project's venv; gs:// needs ``pip install -e '.[gcs]'`` on every host)::

    # TPU pod slice (e.g. v5e-32, 8 hosts): same command on every host; topology auto-detected
    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \\
        "cd lvns-jax && .venv/bin/lvns run experiments/configs/big.toml multihost=true --out gs://BUCKET/run1"

    # several GPU hosts (here 2 hosts x 8 GPUs): one process per host
    # host 0:
    JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        .venv/bin/lvns run experiments/configs/big.toml multihost=true --out /shared/run1
    # host 1: the same with JAX_PROCESS_ID=1
    # (under SLURM or Open MPI, srun/mpirun set these up: jax.distributed.initialize() detects them)

    # one host, all of its GPUs: nothing to do (devices = 0 takes them all)
    .venv/bin/lvns run experiments/configs/big.toml --out runs/big

    # CPU, to try the sharded code path: 8 forced host devices
    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/lvns run experiments/configs/quick.toml \\
        --out runs/q8

``--out`` must be a directory all processes see: a shared file system, or a ``gs://BUCKET/PATH`` URL
(:mod:`lvns_jax.storage`: orbax writes the checkpoints there itself, process 0 uploads the rest).
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lvns_jax import novelty
from lvns_jax.errors import ConfigError

log = logging.getLogger("lvns_jax")

AXIS = "pop"
REPLICA = "rep"  # a v5e / v6e slice's copies of each shard (make_mesh)

_initialized = False


# ----------------------------------------------------------------------------- processes
def initialize(cfg=None) -> None:
    """``jax.distributed.initialize()`` once, if ``cfg.multihost`` (or no cfg) asks for it.

    Arguments come from the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID`` (or auto-detection on Cloud TPU, SLURM, Open MPI).
    """
    global _initialized
    if _initialized or (cfg is not None and not cfg.multihost):
        return
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def is_main() -> bool:
    """True on the process that logs and writes files (process 0)."""
    return jax.process_index() == 0


class NullWriter:
    """Stands in for the TensorBoard/metrics writers on processes other than 0: every call is a no-op."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def to_host(x) -> np.ndarray:
    """The whole global array as NumPy on this process (an all-gather across hosts if needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ----------------------------------------------------------------------------- mesh
def needs_whole_slice(devices) -> bool:
    """True for a multi-chip TPU v5e / v6e slice ("lite" chips): XLA:TPU compiles a program for
    these only when its device assignment is every chip of the slice ("On platforms with limited ICI
    routing device assignment should include all slice devices", seen compiling for v5e:8x8 with
    10 of 64 chips), so the population mesh must cover them all (:func:`make_mesh`)."""
    d = devices[0]
    return len(devices) > 1 and d.platform == "tpu" and "lite" in str(getattr(d, "device_kind", "")).lower()


def device_count(cfg, available: int | None = None, platform: str | None = None, whole: bool = False) -> int:
    """Shards of the population axis for ``cfg`` (see the module doc); ConfigError if impossible.

    On TPU an odd count > 1 is never chosen (XLA:TPU has no all-reduce over odd replica groups).
    ``whole`` (a v5e / v6e slice, :func:`needs_whole_slice`): the count must also divide the
    ``available`` chips, which then hold ``available / count`` replicas of each shard."""
    avail = jax.device_count() if available is None else available
    platform = platform or jax.default_backend()
    ok = (lambda d: d == 1 or d % 2 == 0) if platform == "tpu" else (lambda d: True)
    fits = (lambda d: avail % d == 0) if whole else (lambda d: True)
    n, b = cfg.container_size, cfg.breed_size
    if cfg.devices == 0:
        g = math.gcd(n, b)
        return max(d for d in range(1, avail + 1) if g % d == 0 and ok(d) and fits(d))
    if cfg.devices > avail:
        raise ConfigError(f"devices: {cfg.devices} requested but only {avail} available (0 = all)")
    if n % cfg.devices or b % cfg.devices:
        raise ConfigError(f"devices: {cfg.devices} must divide container_size = {n} and breed_size = {b}")
    if not ok(cfg.devices):
        raise ConfigError(f"devices: {cfg.devices} is odd; XLA:TPU cannot all-reduce over an odd number of chips "
                          f"(use an even count or 0 = automatic)")
    if not fits(cfg.devices):
        raise ConfigError(f"devices: {cfg.devices} must divide the slice's {avail} chips: a TPU v5e / v6e program "
                          f"runs on every chip of its slice (0 = automatic)")
    return cfg.devices


def make_mesh(cfg, devices=None) -> Mesh | None:
    """The population mesh for ``cfg`` over ``devices`` (default: the running devices); None for one.

    Axis ``"pop"`` splits the population over :func:`device_count` devices. On a v5e / v6e slice
    (:func:`needs_whole_slice`) the mesh is 2-D, ``("pop", "rep")`` over every chip: ``"rep"``
    holds copies of each shard (they compute the same values; nothing is split over it)."""
    devices = list(jax.devices() if devices is None else devices)
    whole = needs_whole_slice(devices)
    d = device_count(cfg, len(devices), devices[0].platform, whole)
    if whole and d < len(devices):
        return Mesh(np.asarray(devices).reshape(d, len(devices) // d), (AXIS, REPLICA))
    return None if d == 1 else Mesh(np.asarray(devices[:d]), (AXIS,))


def shards(mesh: Mesh | None) -> int:
    """How many parts the population is split into over ``mesh`` (1 without one)."""
    return 1 if mesh is None else int(mesh.shape[AXIS])


def _put(x, sharding):
    if isinstance(x, jax.Array) and getattr(x, "sharding", None) == sharding:
        return x
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)  # computed identically on every process
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def _map(tree, fn, split: bool):
    """``fn(array, spec)`` over a pytree's arrays: split along the individual axis or replicated."""
    spec = P(AXIS) if split else P()
    return jax.tree_util.tree_map(lambda a: fn(a, spec if getattr(a, "ndim", 0) else P()), tree)


def _map_state(state, models, fn):
    changes = {f: _map(getattr(state, f), fn, f in state.SHARDED_FIELDS) for f in state.FIELDS}
    for f in ("knn", "archive"):  # per-row arrays split, scalars replicated
        if getattr(state, f, None) is not None:
            changes[f] = _map(getattr(state, f), fn, True)
    state = state.replace(**changes)
    if models is not None:
        models = _map(models, fn, False)
    return state, models


def place(state, mesh: Mesh | None):
    """Put a state on ``mesh`` (host code, after init or restore); unchanged without a mesh."""
    if mesh is None:
        return state
    return _map_state(state, None, lambda a, spec: _put(a, NamedSharding(mesh, spec)))[0]


def place_models(models, mesh: Mesh | None):
    if mesh is None:
        return models
    return _map(models, lambda a, spec: _put(a, NamedSharding(mesh, spec)), False)


def constrain(state, mesh: Mesh | None):
    """Inside jit: keep the state's shardings from one generation to the next."""
    if mesh is None:
        return state
    return _map_state(state, None, lambda a, spec: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec)))[0]


def split_rows(x, mesh: Mesh | None):
    """Inside jit: ``x``'s leading axis split over the mesh (no-op without one)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(AXIS)))


# ----------------------------------------------------------------------------- kNN
def pool_lists(mesh: Mesh | None, cont_emb: jax.Array, child_emb: jax.Array, k: int, rule: str,
               chunk: int | None, approx: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Brute-force k-neighbour lists (P, k) of the pool ``container + children`` and its validity (P,),
    rows split over the mesh's devices.

    Each device all-gathers both embedding arrays and computes its own container rows and its own
    children rows against the whole pool. Bit-identical to ``novelty.knn_lists`` of the pool.
    """
    n, b = cont_emb.shape[0], child_emb.shape[0]
    if mesh is None:
        return novelty.knn_lists(jnp.concatenate([cont_emb, child_emb]), k, rule, chunk, approx=approx)
    nl, bl = n // shards(mesh), b // shards(mesh)
    c = chunk or novelty.auto_chunk(n + b)

    def body(cont_l, child_l):
        pool_raw = jnp.concatenate([jax.lax.all_gather(cont_l, AXIS, tiled=True),
                                    jax.lax.all_gather(child_l, AXIS, tiled=True)])
        pool, pool_sq, ok = novelty.prepare(pool_raw)
        dev = jax.lax.axis_index(AXIS)
        ids = jnp.concatenate([dev * nl + jnp.arange(nl), n + dev * bl + jnp.arange(bl)]).astype(jnp.int32)
        block = novelty.block_fn(pool, pool_sq, ok, k, rule, approx)
        picked, _ = novelty.rows_map(block, pool[ids], ids, c)
        return picked[:nl], picked[nl:], ok[ids][:nl], ok[ids][nl:]

    lc, lb, oc, ob = jax.shard_map(body, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(AXIS),) * 4,
                                   check_vma=False)(cont_emb, child_emb)
    return jnp.concatenate([lc, lb]), jnp.concatenate([oc, ob])
