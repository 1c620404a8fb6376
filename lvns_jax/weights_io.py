"""Saving and loading converted model parameters: an orbax checkpoint plus ``meta.json``.

Layout of a converted model directory (e.g. ``weights/vggish``)::

    DIR/params/     orbax checkpoint of the Flax params pytree (float32 numpy arrays)
    DIR/meta.json   metadata: model kind, architecture, source file + sha256, ...
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from lvns_jax.errors import WeightsError


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_params(directory: str | os.PathLike, params: Any, meta: dict) -> None:
    """Write ``params`` (a pytree of arrays) with orbax and ``meta`` as JSON into ``directory``."""
    import orbax.checkpoint as ocp
    import jax

    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.asarray(x).dtype), params)
    ckpt_dir = os.path.join(directory, "params")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt_dir, params, force=True)
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_params(directory: str | os.PathLike, kind: str | None = None) -> tuple[Any, dict]:
    """Read back what :func:`save_params` wrote. ``kind`` checks ``meta['kind']`` if given."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    meta_path = os.path.join(directory, "meta.json")
    ckpt_dir = os.path.join(directory, "params")
    if not os.path.isdir(directory):
        raise WeightsError(f"weights directory not found: {directory}")
    if not os.path.isfile(meta_path) or not os.path.isdir(ckpt_dir):
        raise WeightsError(
            f"{directory} is not a converted lvns-jax model (expected meta.json and params/); "
            "convert one with `lvns convert`"
        )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"corrupt {meta_path}: {e}") from None
    if kind is not None and meta.get("kind") != kind:
        raise WeightsError(f"{directory} holds a {meta.get('kind')!r} model, expected {kind!r}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(ckpt_dir)
    except Exception as e:  # orbax raises many types for damaged checkpoints (some with pages of detail)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise WeightsError(f"corrupt or unreadable parameters in {ckpt_dir}: {type(e).__name__}: {first} "
                           f"(re-convert with `lvns convert`)") from e
    return params, meta
