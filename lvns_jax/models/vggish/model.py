"""VGGish embeddings in JAX: ``embed``, the loaded/untrained model object, ``load``, ``untrained``.

``embed(params, audio, sample_rate)`` reproduces what LVNS-RAVE does with torchvggish
(``torch.hub.load("harritaylor/torchvggish", "vggish", postprocess=False)`` called one clip at
a time at the model's sample rate, the clip's examples averaged), batched and jit-able:

    audio (B, S) at sample_rate -> resample to 16 kHz -> log-mel examples (B, n, 96, 64)
    -> VGG -> (B, n, 128) -> mean over the n examples -> (B, 128) float32

Short clips: a clip gives ``n = 0`` examples when it is shorter than 0.975 s at 16 kHz
(15600 samples after resampling, i.e. fewer than 42998 samples at 44.1 kHz). torchvggish then returns
an empty (0, 128) batch whose mean is NaN (or crashes in its framing for clips under 15 ms).
We define the embedding of such clips as all-NaN (B, 128): no crash, and the engine treats
NaN embeddings as invalid individuals. ``n`` is static (it depends on S and the rate only).
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
from lvns_jax.models.vggish import frontend
from lvns_jax.models.vggish.network import EMBEDDING_SIZE, VGGish, param_shapes, postprocess

log = logging.getLogger(__name__)

_NET = VGGish()


@functools.lru_cache(maxsize=None)
def _net(policy: _precision.Policy) -> VGGish:
    return _NET if policy == _NET.policy else VGGish(policy)


def embed_examples(params: Any, examples: jax.Array, pca: Any = None,
                   policy: _precision.Policy = _precision.FLOAT32) -> jax.Array:
    """VGG on examples (..., 96, 64) -> (..., 128); with ``pca`` also PCA + quantisation.
    ``policy``: matmul precision of the network (:mod:`lvns_jax.models.precision`)."""
    lead = examples.shape[:-2]
    flat = examples.reshape((-1,) + examples.shape[-2:])
    out = _net(policy).apply({"params": params}, flat)
    if pca is not None:
        out = postprocess(out, pca["eigen_vectors"], pca["means"])
    return out.reshape(lead + (EMBEDDING_SIZE,))


def embed(params: Any, audio: jax.Array, sample_rate: int, pca: Any = None, high_precision: bool = True,
          policy: _precision.Policy = _precision.FLOAT32) -> jax.Array:
    """Mean VGGish embedding of each clip: audio (..., S) float -> (..., 128) float32.

    A pure function of ``params`` (the Flax params dict, e.g. ``model.params``) and ``audio``;
    ``sample_rate`` (and ``high_precision``, see :func:`frontend.log_mel`) must be static
    Python values under ``jit``. ``pca`` (``{"eigen_vectors": (128,128), "means": (128,)}``)
    applies torchvggish's PCA + 8-bit quantisation to each example's embedding before the
    mean, i.e. what ``postprocess=True`` would have given; LVNS-RAVE itself uses
    ``postprocess=False`` (``pca=None``). Clips with no complete 0.96 s example give NaN.
    ``policy`` (static): matmul precision of the network (:mod:`lvns_jax.models.precision`; the
    front end is not affected, see ``high_precision``).
    """
    sample_rate = frontend._check_rate(sample_rate)
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim < 1:
        raise ValueError("audio must have shape (..., samples)")
    n_ex = frontend.num_examples(audio.shape[-1], sample_rate)
    if n_ex == 0:
        return jnp.full(audio.shape[:-1] + (EMBEDDING_SIZE,), jnp.nan, jnp.float32)
    examples = frontend.waveform_to_examples(audio, sample_rate, high_precision=high_precision)
    return embed_examples(params, examples, pca, policy).mean(axis=-2)


_embed_jit = jax.jit(embed, static_argnames=("sample_rate", "high_precision", "policy"))


@dataclasses.dataclass(frozen=True, eq=False)
class VGGishModel:
    """A VGGish model ready to embed audio.

    Attributes: ``params`` (Flax params dict), ``pca`` (dict or None), ``trained`` (False for
    :func:`untrained`), ``description`` (says UNTRAINED for random weights), ``meta``.
    """

    params: Any
    trained: bool
    description: str
    pca: Any = None
    meta: dict = dataclasses.field(default_factory=dict)

    def embed(self, audio, sample_rate: int, postprocess: bool = False) -> jax.Array:
        """audio (B, S) (or (S,)) at ``sample_rate`` -> (B, 128) (or (128,)) float32, jit-compiled."""
        return _embed_jit(self.params, audio, sample_rate, pca=self._pca(postprocess))

    def embed_fn(self, sample_rate: int, postprocess: bool = False) -> Callable[[jax.Array], jax.Array]:
        """A pure ``f(audio (B, S)) -> (B, 128)`` closed over the params, usable inside ``jit``.

        The params become constants of whatever jit traces ``f``; to pass them as arguments
        instead use ``functools.partial(embed, sample_rate=...)`` with ``model.params``.
        """
        sample_rate = frontend._check_rate(sample_rate)
        params, pca = self.params, self._pca(postprocess)

        def f(audio):
            return embed(params, audio, sample_rate, pca=pca)

        return f

    def pure_embed(self, sample_rate: int, postprocess: bool = False, high_precision: bool = True,
                   policy: _precision.Policy = _precision.FLOAT32) -> Callable[[Any, jax.Array], jax.Array]:
        """A pure ``f(params, audio (B, S)) -> (B, 128)`` for use inside ``jit`` with
        ``self.params`` passed as an argument (compile time does not grow with model size).
        With ``postprocess`` the (small) PCA parameters are closed over. ``high_precision=False``:
        the float32 front end (for backends without float64 FFT, e.g. TPU). ``policy``: matmul
        precision of the network (:mod:`lvns_jax.models.precision`)."""
        sample_rate = frontend._check_rate(sample_rate)
        pca = self._pca(postprocess)

        def f(params, audio):
            return embed(params, audio, sample_rate, pca=pca, high_precision=high_precision, policy=policy)

        return f

    def num_examples(self, num_samples: int, sample_rate: int) -> int:
        return frontend.num_examples(num_samples, sample_rate)

    def _pca(self, postprocess: bool):
        if not postprocess:
            return None
        if self.pca is None:
            raise WeightsError(f"{self.description} has no PCA parameters; convert with --pca to use postprocess")
        return self.pca

    def __repr__(self) -> str:
        return f"VGGishModel({self.description})"


def _check_params(params: Any, where: str) -> dict:
    expected = param_shapes()
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise WeightsError(f"{where}: VGGish params have layers {got}, expected {sorted(expected)}")
    out = {}
    for layer, shapes in expected.items():
        out[layer] = {}
        for name, shape in shapes.items():
            arr = params[layer].get(name) if isinstance(params[layer], dict) else None
            if arr is None:
                raise WeightsError(f"{where}: VGGish params lack {layer}/{name}")
            if tuple(arr.shape) != tuple(shape):
                raise WeightsError(f"{where}: {layer}/{name} has shape {tuple(arr.shape)}, expected {shape}")
            out[layer][name] = jnp.asarray(arr, jnp.float32)
    return out


def load(path: str | os.PathLike = "weights/vggish") -> VGGishModel:
    """Load weights converted by ``lvns convert vggish`` (a directory with params/ and meta.json)."""
    from lvns_jax.weights_io import load_params

    path = os.fspath(path)
    tree, meta = load_params(path, kind="vggish")
    if not isinstance(tree, dict) or "params" not in tree:
        raise WeightsError(f"{path}: no VGGish params in the checkpoint; re-run `lvns convert vggish`")
    params = _check_params(tree["params"], path)
    pca = None
    if tree.get("pca") is not None:
        p = tree["pca"]
        try:
            pca = {"eigen_vectors": jnp.asarray(p["eigen_vectors"], jnp.float32).reshape(128, 128),
                   "means": jnp.asarray(p["means"], jnp.float32).reshape(128)}
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: bad PCA parameters ({e})") from None
    sha = str(meta.get("sha256", "unknown"))
    trained = bool(meta.get("trained", True))
    label = "VGGish" if trained else "UNTRAINED VGGish"
    return VGGishModel(params=params, trained=trained, description=f"{label} from {path} (sha256 {sha[:12]})",
                       pca=pca, meta=dict(meta))


@functools.lru_cache(maxsize=4)
def _init_params(seed: int) -> dict:
    """He-normal kernels (std ``sqrt(2 / fan_in)``) and zero biases, drawn from NumPy's PCG64
    seeded with ``seed`` in a fixed layer order.

    Not Flax's default init: with LeCun-normal weights and ReLUs the activations shrink ~1.4x
    per layer, and drawing 72 M values with JAX's threefry on a busy 2-core CPU takes 10-15 s
    against ~2 s here. He-normal keeps the activations O(1), so untrained embeddings still
    depend clearly on the input (useful for dry runs).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    params = {}
    for layer, shapes in param_shapes().items():  # fixed order: conv1 ... fc2
        kshape = shapes["kernel"]
        fan_in = int(np.prod(kshape[:-1]))
        kernel = rng.standard_normal(kshape, dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / fan_in))
        params[layer] = {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(shapes["bias"], jnp.float32)}
    return params


def untrained(seed: int = 0) -> VGGishModel:
    """A full-size VGGish with random (He-normal, see :func:`_init_params`) weights, for tests
    and dry runs; the same ``seed`` gives the same weights.

    Its embeddings are meaningless for novelty; it is labelled UNTRAINED in its description
    and a warning is logged.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    desc = f"UNTRAINED VGGish (random init, seed {seed})"
    log.warning("%s: embeddings are NOT those of the trained VGGish; convert real weights with "
                "`lvns convert vggish vggish-10086976.pth --out weights/vggish`", desc)
    params = jax.tree_util.tree_map(lambda x: x, _init_params(seed))
    return VGGishModel(params=params, trained=False, description=desc, pca=None,
                       meta={"kind": "vggish", "trained": False, "seed": seed})
