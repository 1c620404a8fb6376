"""The initial container of latents (N, C, T) float32.

* ``uniform``: U[-1, 1) (the original's ``"random"``),
* ``normal``: N(0, 1),
* ``dataset``: N items drawn without replacement from a file of encoded latents, each read from
  frame ``offset`` on and truncated or zero-padded to T frames (as the original does). Files:
  ``.npy`` / ``.npz`` (M, C, T') as written by ``lvns encode``, or the original LVNS-RAVE ``.h5``
  layout (datasets "0" ... "M-1" of shape (1, C, T'_i); needs the ``h5`` extra).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LatentFile:
    """A file of encoded latents: ``count`` items of ``channels`` channels, read on demand.

    ``read(indices)`` returns one (C, T_i) float32 array per index (lengths may differ in ``.h5``).
    ``meta`` holds what ``lvns encode`` recorded (``rave_sha256``, ``names``, ...), if anything.
    """

    path: str
    count: int
    channels: int
    read: Callable[[Sequence[int]], list]
    meta: dict


def _check_finite(source: str, items, indices=None) -> None:
    """Refuse latents holding NaN/inf (they would decode to NaN audio and poison the novelty scores),
    naming the file and the first bad item. ``items``: an (M, C, T') array or a list of (C, T) arrays
    (file indices ``indices``)."""
    if isinstance(items, np.ndarray):
        ok = np.isfinite(items.reshape(items.shape[0], -1)).all(axis=1)
        bad = np.flatnonzero(~ok)
    else:
        bad = [k for k, x in enumerate(items) if not np.isfinite(x).all()]
    if len(bad):
        where = [int(indices[k]) for k in bad] if indices is not None else [int(k) for k in bad]
        first = min(where)
        raise ConfigError(f"dataset_path: {source}: item {first} holds NaN or inf values ({len(where)} bad "
                          f"item{'s' if len(where) > 1 else ''}); re-encode the audio or drop those items")


def _array_file(path: str) -> LatentFile:
    meta: dict = {}
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                names = list(f.keys())
                if "latents" in names:
                    arr = f["latents"]
                    meta = {k: f[k] for k in names if k != "latents"}
                elif len(names) == 1:
                    arr = f[names[0]]
                else:
                    raise ConfigError(f"dataset_path: {path} holds {names}; expected an array named 'latents'")
        else:
            arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"dataset_path: cannot read {path}: {e}") from None
    if arr.ndim != 3:
        raise ConfigError(f"dataset_path: latents must be (M, C, T'), got shape {arr.shape} in {path}")
    arr = np.asarray(arr, np.float32)
    _check_finite(path, arr)
    meta = {k: (v.item() if v.ndim == 0 else v) for k, v in meta.items()}
    return LatentFile(path, arr.shape[0], arr.shape[1], lambda idx: [arr[int(i)] for i in idx], meta)


def _h5_file(path: str) -> LatentFile:
    """The original LVNS-RAVE layout: datasets "0" ... "M-1", each (1, C, T'), item = ``f[str(k)][0]``."""
    from lvns_jax.encode import require_h5py

    h5py = require_h5py()
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            count = len(keys)
            missing = [str(i) for i in range(count) if str(i) not in keys]
            if missing:
                extra = sorted(keys - {str(i) for i in range(count)})[:5]
                raise ConfigError(f"dataset_path: {path} must hold datasets named 0 ... {count - 1} (the original "
                                  f"LVNS-RAVE layout); {', '.join(missing[:5])} missing, found {', '.join(extra)}")
            if count == 0:
                raise ConfigError(f"dataset_path: {path} holds no datasets")
            first = f["0"].shape
            meta = {k: f.attrs[k] for k in f.attrs}
    except OSError as e:
        raise ConfigError(f"dataset_path: cannot read {path}: {e}") from None
    if len(first) != 3:
        raise ConfigError(f"dataset_path: {path}: dataset '0' has shape {first}, expected (1, C, T')")

    def read(idx):
        out = []
        with h5py.File(path, "r") as f:
            for k in idx:
                d = f[str(int(k))]
                if d.ndim != 3:
                    raise ConfigError(f"dataset_path: {path}: dataset '{k}' has shape {d.shape}, expected (1, C, T')")
                out.append(np.asarray(d[0], np.float32))
        _check_finite(path, out, list(idx))
        return out

    return LatentFile(path, count, int(first[1]), read, meta)


def open_latent_file(path: str) -> LatentFile:
    """``.npy`` / ``.npz`` ((M, C, T') array, ``latents`` in an npz) or the original's ``.h5`` layout."""
    if not os.path.isfile(path):
        raise ConfigError(f"dataset_path: file not found: {path}")
    if path.endswith((".h5", ".hdf5")):
        return _h5_file(path)
    return _array_file(path)


def load_latent_file(path: str) -> np.ndarray:
    """All items of ``path`` as one (M, C, T') array (items of an ``.h5`` zero-padded to the longest)."""
    lf = open_latent_file(path)
    items = lf.read(range(lf.count))
    t = max(x.shape[1] for x in items)
    return np.stack([np.pad(x, ((0, 0), (0, t - x.shape[1]))) for x in items])


def fit_frames(latents: np.ndarray, frames: int, offset: int) -> np.ndarray:
    """Take frames ``[offset:]`` and truncate or zero-pad to ``frames`` (original semantics)."""
    x = latents[..., offset:]
    x = x[..., :frames]
    pad = frames - x.shape[-1]
    if pad > 0:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(x, np.float32)


def from_dataset(key: jax.Array, latents: "np.ndarray | LatentFile", size: int, channels: int, frames: int,
                 offset: int, source: str = "dataset") -> jax.Array:
    """``size`` items drawn without replacement (first ``size`` of a permutation of the M items, as the
    original's ``torch.randperm(M)[:size]``), each fitted with :func:`fit_frames`."""
    if not isinstance(latents, LatentFile):
        arr = np.asarray(latents, np.float32)
        if arr.ndim == 3:
            _check_finite(source, arr)
        latents = LatentFile(source, arr.shape[0], arr.shape[1], lambda idx: [arr[int(i)] for i in idx], {})
    m, c = latents.count, latents.channels
    if c != channels:
        raise ConfigError(f"dataset_path: {source} has {c} latent channels, the model/config has "
                          f"latent_channels = {channels}")
    if m < size:
        raise ConfigError(f"dataset_path: {source} holds {m} latents, fewer than container_size = {size} "
                          f"(they are drawn without replacement; encode more audio or lower container_size)")
    idx = np.asarray(jax.random.permutation(key, m)[:size])
    items = latents.read(idx)
    for i, x in zip(idx, items):
        if x.ndim != 2 or x.shape[0] != channels:
            raise ConfigError(f"dataset_path: {source}: item {int(i)} has shape {x.shape}, expected "
                              f"({channels}, T') for latent_channels = {channels}")
    return jnp.asarray(np.stack([fit_frames(x, frames, offset) for x in items]))


def dataset_model_warning(dataset_path: str, rave: str) -> str | None:
    """A warning when the latents were encoded by another RAVE model than the one that decodes them.

    ``lvns encode`` records the export's sha256; ``lvns convert rave`` records it in ``meta.json``.
    """
    try:
        meta = open_latent_file(dataset_path).meta
    except ConfigError:
        return None
    enc = meta.get("rave_sha256")
    if not enc:
        return None
    enc = str(enc)
    src = str(meta.get("rave_source", "?"))
    dec = None
    meta_json = os.path.join(rave, "meta.json")
    if os.path.isfile(meta_json):
        import json

        with open(meta_json) as f:
            dec = json.load(f).get("sha256")
    if dec == enc:
        return None
    return (f"dataset_path {dataset_path} was encoded by {src} (sha256 {enc[:12]}...), but rave = {rave!r} "
            f"{'was converted from another file (sha256 ' + str(dec)[:12] + '...)' if dec else 'is not that model'}"
            f"; decode with the model that encoded: lvns convert rave {src} --out DIR, then rave=DIR")


def init_container(key: jax.Array, init: str, size: int, channels: int, frames: int,
                   dataset_path: str = "", offset: int = 0) -> jax.Array:
    shape = (size, channels, frames)
    if init == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    if init == "normal":
        return jax.random.normal(key, shape, jnp.float32)
    if init == "dataset":
        return from_dataset(key, open_latent_file(dataset_path), size, channels, frames, offset,
                            source=dataset_path)
    raise ConfigError(f"init: {init!r} is not one of uniform, normal, dataset")


@dataclasses.dataclass(frozen=True)
class ContainerInit:
    """How the initial container is made (the ``init`` keys), as a value: ``ContainerInit(...)(key)``."""

    method: str
    size: int
    channels: int
    frames: int
    dataset_path: str = ""
    offset: int = 0

    def __call__(self, key: jax.Array) -> jax.Array:
        return init_container(key, self.method, self.size, self.channels, self.frames, self.dataset_path,
                              self.offset)
