"""The initial container of latents (N, C, T) float32.

* ``uniform``: U[-1, 1) (the original's ``"random"``),
* ``normal``: N(0, 1),
* ``dataset``: N items drawn without replacement from a file of encoded latents (M, C, T'), each
  read from frame ``offset`` on and truncated or zero-padded to T frames (as the original does).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.errors import ConfigError


def load_latent_file(path: str) -> np.ndarray:
    """Read encoded latents (M, C, T') from ``.npy`` or ``.npz`` (array ``latents`` or the only one)."""
    if not os.path.isfile(path):
        raise ConfigError(f"dataset_path: file not found: {path}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                names = list(f.keys())
                if "latents" in names:
                    arr = f["latents"]
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
    return np.asarray(arr, np.float32)


def fit_frames(latents: np.ndarray, frames: int, offset: int) -> np.ndarray:
    """Take frames ``[offset:]`` and truncate or zero-pad to ``frames`` (original semantics)."""
    x = latents[..., offset:]
    x = x[..., :frames]
    pad = frames - x.shape[-1]
    if pad > 0:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(x, np.float32)


def from_dataset(key: jax.Array, latents: np.ndarray, size: int, channels: int, frames: int,
                 offset: int, source: str = "dataset") -> jax.Array:
    m, c = latents.shape[:2]
    if c != channels:
        raise ConfigError(f"dataset_path: {source} has {c} latent channels, the model/config has "
                          f"latent_channels = {channels}")
    if m < size:
        raise ConfigError(f"dataset_path: {source} holds {m} latents, fewer than container_size = {size}")
    idx = np.asarray(jax.random.permutation(key, m)[:size])
    return jnp.asarray(fit_frames(latents[idx], frames, offset))


def init_container(key: jax.Array, init: str, size: int, channels: int, frames: int,
                   dataset_path: str = "", offset: int = 0) -> jax.Array:
    shape = (size, channels, frames)
    if init == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    if init == "normal":
        return jax.random.normal(key, shape, jnp.float32)
    if init == "dataset":
        return from_dataset(key, load_latent_file(dataset_path), size, channels, frames, offset,
                            source=dataset_path)
    raise ConfigError(f"init: {init!r} is not one of uniform, normal, dataset")
