"""PANNs CNN14 embeddings in JAX: ``embed``, the loaded/untrained model object, ``load``, ``untrained``.

``embed(params, audio, sample_rate)`` computes what panns-inference's ``AudioTagging`` returns as
``embedding`` (``Cnn14(...)(audio)["embedding"]`` in eval mode), batched and jit-able:

    audio (B, S) at sample_rate -> resample to 32 kHz -> log-mel (B, 1 + N // 320, 64)
    -> CNN14 -> (B, 2048) float32 (after fc1's ReLU)

The whole path is float32 and differentiable (``jax.grad`` w.r.t. the audio works), so the same
function serves the engine's ``embed`` and ``embed_grad``.

Short clips: CNN14 needs at least 32 frames (9920 samples at 32 kHz, :func:`min_samples` at other
rates); torch's pooling fails below that. We define the embedding of such clips as all-NaN
(B, 2048), as VGGish does for clips without a 0.96 s example.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.errors import WeightsError
from lvns_jax.models import precision as _precision
from lvns_jax.models.panns import frontend
from lvns_jax.models.panns.network import BLOCKS, EMBEDDING_SIZE, Cnn14, param_shapes

log = logging.getLogger(__name__)

ARCHITECTURE = "panns_cnn14"
KIND = "panns"
_NET = Cnn14()


@functools.lru_cache(maxsize=None)
def _net(policy: _precision.Policy) -> Cnn14:
    return _NET if policy == _NET.policy else Cnn14(policy)


def embed_logmel(params: Any, logmel: jax.Array, policy: _precision.Policy = _precision.FLOAT32) -> jax.Array:
    """CNN14 on log-mel (..., T, 64) -> (..., 2048); T >= 32. ``policy``: matmul precision."""
    lead = logmel.shape[:-2]
    flat = logmel.reshape((-1,) + logmel.shape[-2:])
    return _net(policy).apply({"params": params}, flat).reshape(lead + (EMBEDDING_SIZE,))


def embed(params: Any, audio: jax.Array, sample_rate: int,
          policy: _precision.Policy = _precision.FLOAT32) -> jax.Array:
    """CNN14 embedding of each clip: audio (..., S) float -> (..., 2048) float32.

    Pure in ``params`` (the params dict, e.g. ``model.params``) and ``audio``; ``sample_rate``
    must be a static Python int under ``jit``. Clips shorter than :func:`min_samples` give NaN.
    ``policy`` (static): matmul precision of the network (:mod:`lvns_jax.models.precision`).
    """
    sample_rate = frontend._check_rate(sample_rate)
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim < 1:
        raise ValueError("audio must have shape (..., samples)")
    if not frontend.embeddable(audio.shape[-1], sample_rate):
        return jnp.full(audio.shape[:-1] + (EMBEDDING_SIZE,), jnp.nan, jnp.float32)
    return embed_logmel(params, frontend.log_mel(audio, sample_rate), policy)


_embed_jit = jax.jit(embed, static_argnames=("sample_rate", "policy"))


def min_samples(sample_rate: int = frontend.SAMPLE_RATE) -> int:
    """Shortest clip (in samples at ``sample_rate``) with a CNN14 embedding (0.31 s)."""
    return frontend.min_samples(sample_rate)


@dataclasses.dataclass(frozen=True, eq=False)
class PannsModel:
    """A PANNs CNN14 model ready to embed audio.

    Attributes: ``params`` (params dict, see :mod:`~lvns_jax.models.panns.network`), ``trained``
    (False for :func:`untrained`), ``description`` (says UNTRAINED for random weights), ``meta``.
    """

    params: Any
    trained: bool
    description: str
    meta: dict = dataclasses.field(default_factory=dict)

    embedding_size = EMBEDDING_SIZE

    def embed(self, audio, sample_rate: int) -> jax.Array:
        """audio (B, S) (or (S,)) at ``sample_rate`` -> (B, 2048) (or (2048,)) float32, jit-compiled."""
        return _embed_jit(self.params, audio, sample_rate)

    def embed_fn(self, sample_rate: int) -> Callable[[jax.Array], jax.Array]:
        """A pure ``f(audio (B, S)) -> (B, 2048)`` closed over the params (they become constants)."""
        sample_rate = frontend._check_rate(sample_rate)
        params = self.params

        def f(audio):
            return embed(params, audio, sample_rate)

        return f

    def pure_embed(self, sample_rate: int,
                   policy: _precision.Policy = _precision.FLOAT32) -> Callable[[Any, jax.Array], jax.Array]:
        """A pure ``f(params, audio (B, S)) -> (B, 2048)`` float32, for ``jit`` with ``self.params``
        as an argument. Differentiable w.r.t. ``audio`` (and ``params``): it is also the
        ``embed_grad`` of the engine. ``policy``: matmul precision (:mod:`lvns_jax.models.precision`)."""
        sample_rate = frontend._check_rate(sample_rate)

        def f(params, audio):
            return embed(params, audio, sample_rate, policy)

        return f

    def min_samples(self, sample_rate: int) -> int:
        return frontend.min_samples(sample_rate)

    def __repr__(self) -> str:
        return f"PannsModel({self.description})"


def check_params(params: Any, where: str) -> dict:
    """Check a params tree against :func:`network.param_shapes` -> the same tree as float32 jnp arrays."""

    def walk(tree, shapes, path):
        if not isinstance(tree, dict):
            raise WeightsError(f"{where}: CNN14 params entry {path or 'root'} is a {type(tree).__name__}, "
                               "expected a dict")
        missing = [k for k in shapes if k not in tree]
        extra = [k for k in tree if k not in shapes]
        if missing or extra:
            what = []
            if missing:
                what.append(f"lack {', '.join(path + k for k in missing[:4])}{', ...' if len(missing) > 4 else ''}")
            if extra:
                what.append(f"have unexpected {', '.join(path + str(k) for k in extra[:4])}")
            raise WeightsError(f"{where}: CNN14 params {' and '.join(what)}; re-run `lvns convert panns`")
        out = {}
        for k, s in shapes.items():
            if isinstance(s, dict):
                out[k] = walk(tree[k], s, f"{path}{k}/")
            else:
                arr = tree[k]
                if tuple(getattr(arr, "shape", ())) != tuple(s):
                    raise WeightsError(f"{where}: {path}{k} has shape {tuple(getattr(arr, 'shape', ()))}, "
                                       f"expected {s}")
                out[k] = jnp.asarray(arr, jnp.float32)
        return out

    return walk(params, param_shapes(), "")


def load(path: str | os.PathLike = "weights/panns") -> PannsModel:
    """Load weights converted by ``lvns convert panns`` (a directory with params/ and meta.json)."""
    from lvns_jax.weights_io import load_params

    path = os.fspath(path)
    tree, meta = load_params(path, kind=KIND)
    if meta.get("architecture") != ARCHITECTURE:
        raise WeightsError(f"{path}: meta.json says architecture {meta.get('architecture')!r}, expected "
                           f"{ARCHITECTURE!r}; re-run `lvns convert panns`")
    if not isinstance(tree, dict) or "params" not in tree:
        raise WeightsError(f"{path}: no CNN14 params in the checkpoint; re-run `lvns convert panns`")
    params = check_params(tree["params"], path)
    sha = str(meta.get("sha256", "unknown"))
    trained = bool(meta.get("trained", True))
    label = "PANNs CNN14" if trained else "UNTRAINED PANNs CNN14"
    return PannsModel(params=params, trained=trained, description=f"{label} from {path} (sha256 {sha[:12]})",
                      meta=dict(meta))


@functools.lru_cache(maxsize=2)
def _init_params(seed: int) -> dict:
    """He-normal conv / fc1 kernels (std ``sqrt(2 / fan_in)``), zero fc1 bias, identity BatchNorms
    (scale 1, bias 0, mean 0, var 1), drawn from NumPy's PCG64 seeded with ``seed`` in a fixed
    layer order (NumPy is several times faster than JAX's threefry for 80 M values on a CPU).

    panns initialises with Xavier-uniform, which halves the variance of every ReLU layer
    (12 convolutions: the activations shrink ~64x); He-normal keeps them O(1)."""
    rng = np.random.Generator(np.random.PCG64(seed))

    def bn(c):
        return {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32),
                "mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)}

    def normal(shape):
        fan_in = int(np.prod(shape[:-1]))
        k = rng.standard_normal(shape, dtype=np.float32)
        k *= np.float32(np.sqrt(2.0 / fan_in))
        return k

    shapes = param_shapes()
    params: dict = {"bn0": bn(64)}
    for name, _, _ in BLOCKS:
        s = shapes[name]
        params[name] = {"conv1": {"kernel": normal(s["conv1"]["kernel"])}, "bn1": bn(s["bn1"]["scale"][0]),
                        "conv2": {"kernel": normal(s["conv2"]["kernel"])}, "bn2": bn(s["bn2"]["scale"][0])}
    params["fc1"] = {"kernel": normal(shapes["fc1"]["kernel"]), "bias": np.zeros(EMBEDDING_SIZE, np.float32)}
    return params


def untrained(seed: int = 0) -> PannsModel:
    """A full-size CNN14 (80 M parameters) with random weights (see :func:`_init_params`), for
    tests and dry runs; the same ``seed`` gives the same weights.

    Its embeddings are meaningless for novelty: it is labelled UNTRAINED in its description,
    ``trained`` is False and a warning is logged."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    desc = f"UNTRAINED PANNs CNN14 (random init, seed {seed})"
    log.warning("%s: embeddings are NOT those of the trained CNN14; convert real weights with "
                "`lvns convert panns Cnn14_mAP=0.431.pth --out weights/panns`", desc)
    params = jax.tree_util.tree_map(jnp.asarray, _init_params(seed))
    return PannsModel(params=params, trained=False, description=desc,
                      meta={"kind": KIND, "architecture": ARCHITECTURE, "trained": False, "seed": seed,
                            "sample_rate": frontend.SAMPLE_RATE, "embedding_size": EMBEDDING_SIZE})
