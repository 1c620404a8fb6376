"""Convert a torchvggish state dict (``vggish-10086976.pth``) to Flax params (orbax + meta.json).

Usage: ``lvns convert vggish vggish-10086976.pth [--pca vggish_pca_params-970ea276.pth] --out weights/vggish``

torch is needed here only (``pip install 'lvns-jax[convert]'``). Files are read with
``torch.load(weights_only=True)``; the PCA release file holds NumPy arrays, for which only the
NumPy reconstruction globals are allow-listed (no arbitrary code runs).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lvns_jax.errors import WeightsError
from lvns_jax.models.vggish.network import EMBEDDING_SIZE, TORCH_NAMES, param_shapes
from lvns_jax.weights_io import save_params, sha256_of

ARCHITECTURE = "torchvggish VGG: conv 64-M-128-M-256-256-M-512-512-M, fc 12288-4096-4096-128, final ReLU"
FORMAT_VERSION = 1
# torch.hub names release files by the first 8 hex digits of their sha256
RELEASE_FILES = {
    "10086976": "torchvggish v0.1 release vggish-10086976.pth",
    "970ea276": "torchvggish v0.1 release vggish_pca_params-970ea276.pth",
}
PCA_KEYS = ("pca_eigen_vectors", "pca_means")


def torch_shapes() -> dict[str, tuple[int, ...]]:
    """Expected torchvggish state-dict keys and shapes."""
    out = {}
    for name, shp in param_shapes().items():
        k = shp["kernel"]
        prefix = TORCH_NAMES[name]
        if len(k) == 4:  # (kh, kw, in, out) <- (out, in, kh, kw)
            out[prefix + ".weight"] = (k[3], k[2], k[0], k[1])
        else:  # (in, out) <- (out, in)
            out[prefix + ".weight"] = (k[1], k[0])
        out[prefix + ".bias"] = shp["bias"]
    return out


def _import_torch():
    try:
        import torch
    except ImportError:
        raise WeightsError(
            "converting torchvggish weights needs torch: pip install 'lvns-jax[convert]'"
        ) from None
    return torch


def _numpy_safe_globals():
    """NumPy globals needed to unpickle plain ndarrays (old and new module names)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    out = [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    if hasattr(np, "dtypes"):
        out += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return out


def _torch_load(path: str, what: str) -> Any:
    torch = _import_torch()
    if not os.path.exists(path):
        raise WeightsError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise WeightsError(f"{what} is not a file: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ... on wrong files
        msg = " ".join(str(e).split())
        if len(msg) > 200:
            msg = msg[:200] + "..."
        raise WeightsError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {msg})") from None
    if isinstance(obj, torch.jit.ScriptModule) or type(obj).__name__.startswith("RecursiveScriptModule"):
        raise WeightsError(f"{path} is a TorchScript export (e.g. a RAVE .ts), not a torchvggish state dict")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a torchvggish state dict (a dict of tensors)")
    return obj


def _to_numpy(value: Any, key: str, path: str) -> np.ndarray:
    torch = _import_torch()
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu()
        if not arr.is_floating_point():
            raise WeightsError(f"{path}: tensor {key!r} has dtype {arr.dtype}, expected floating point")
        arr = arr.to(torch.float32).numpy()  # float64 values beyond float32 range become inf
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{path}: array {key!r} has dtype {value.dtype}, expected floating point")
        arr = value.astype(np.float32)
    else:
        raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    if not np.all(np.isfinite(arr)):
        raise WeightsError(f"{path}: tensor {key!r} contains NaN or Inf")
    return arr


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """Read and check a torchvggish state dict -> (Flax params, PCA dict or None).

    A full ``VGGish`` state dict saved with ``postprocess=True`` carries the PCA as
    ``pproc.pca_eigen_vectors`` / ``pproc.pca_means``; those are returned as the PCA.
    """
    path = os.fspath(path)
    sd = _torch_load(path, "torchvggish weights")
    sd = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}
    expected = torch_shapes()
    pca_in_sd = {k: sd[f"pproc.{k}"] for k in PCA_KEYS if f"pproc.{k}" in sd}
    if set(PCA_KEYS) & set(sd) and not set(expected) & set(sd):
        raise WeightsError(f"{path} holds VGGish PCA parameters, not network weights; pass it with --pca")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not (isinstance(k, str) and k.startswith("pproc."))]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        hint = f"; it has {', '.join(map(str, list(sd)[:4]))}{', ...' if len(sd) > 4 else ''}" if sd else "; it is empty"
        raise WeightsError(f"{path} is not a torchvggish state dict: missing {len(missing)} tensors ({shown}){hint}")
    if unexpected:
        shown = ", ".join(map(str, unexpected[:6])) + (", ..." if len(unexpected) > 6 else "")
        raise WeightsError(f"{path}: unexpected tensors for torchvggish VGG ({shown})")
    params: dict = {}
    inverse = {v: k for k, v in TORCH_NAMES.items()}
    for key, shape in expected.items():
        arr = _to_numpy(sd[key], key, path)
        if tuple(arr.shape) != tuple(shape):
            raise WeightsError(f"{path}: tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        prefix, kind = key.rsplit(".", 1)
        layer = inverse[prefix]
        if kind == "weight":
            arr = arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr.T
            params.setdefault(layer, {})["kernel"] = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            params.setdefault(layer, {})["bias"] = arr.astype(np.float32)
    pca = None
    if pca_in_sd:
        pca = _check_pca(pca_in_sd, path)
    return params, pca


def _check_pca(d: dict, path: str) -> dict:
    missing = [k for k in PCA_KEYS if k not in d]
    if missing:
        raise WeightsError(f"{path} is not a torchvggish PCA file: missing {', '.join(missing)}")
    vec = _to_numpy(d["pca_eigen_vectors"], "pca_eigen_vectors", path)
    means = _to_numpy(d["pca_means"], "pca_means", path)
    if vec.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE):
        raise WeightsError(f"{path}: 'pca_eigen_vectors' has shape {vec.shape}, expected (128, 128)")
    if means.size != EMBEDDING_SIZE or means.shape not in ((128,), (128, 1), (1, 128)):
        raise WeightsError(f"{path}: 'pca_means' has shape {means.shape}, expected (128,) or (128, 1)")
    return {"eigen_vectors": vec.astype(np.float32), "means": means.reshape(-1).astype(np.float32)}


def read_pca(path: str | os.PathLike) -> dict:
    """Read torchvggish's PCA parameters (``vggish_pca_params-970ea276.pth``)."""
    path = os.fspath(path)
    d = _torch_load(path, "PCA parameters")
    d = {(k[len("pproc."):] if isinstance(k, str) and k.startswith("pproc.") else k): v for k, v in d.items()}
    if not set(PCA_KEYS) & set(d) and any(str(k).startswith(("features.", "embeddings.")) for k in d):
        raise WeightsError(f"{path} holds VGGish network weights, not PCA parameters")
    return _check_pca(d, path)


def _release(sha: str) -> str | None:
    return RELEASE_FILES.get(sha[:8])


def convert(source_path: str | os.PathLike, out_dir: str | os.PathLike, pca: str | os.PathLike | None = None) -> dict:
    """Convert torchvggish weights (and optionally PCA params) into ``out_dir``; returns the meta."""
    source_path = os.fspath(source_path)
    pca_file = read_pca(os.fspath(pca)) if pca is not None else None  # cheap checks first
    params, pca_params = read_state_dict(source_path)
    sha = sha256_of(source_path)
    meta: dict = {
        "kind": "vggish",
        "architecture": ARCHITECTURE,
        "format_version": FORMAT_VERSION,
        "source": os.path.abspath(source_path),
        "sha256": sha,
        "trained": True,
        "embedding_size": EMBEDDING_SIZE,
        "pca": False,
    }
    if _release(sha):
        meta["release"] = _release(sha)
    if pca is not None:
        pca = os.fspath(pca)
        pca_params = pca_file
        meta["pca_source"] = os.path.abspath(pca)
        meta["pca_sha256"] = sha256_of(pca)
        if _release(meta["pca_sha256"]):
            meta["pca_release"] = _release(meta["pca_sha256"])
    elif pca_params is not None:
        meta["pca_source"] = meta["source"] + " (pproc.*)"
    tree: dict = {"params": params}
    if pca_params is not None:
        tree["pca"] = pca_params
        meta["pca"] = True
    save_params(out_dir, tree, meta)
    return meta
