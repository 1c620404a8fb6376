"""Convert a torchvggish state dict (``vggish-10086976.pth``) to Flax params (orbax + meta.json).

Usage: ``lvns convert vggish vggish-10086976.pth [--pca vggish_pca_params-970ea276.pth] --out weights/vggish``

Accepted files (one table in ``weights/README.md``):

- weights: a torchvggish state dict, legacy pickle or zip-format ``.pth`` (the release file,
  ``torch.save(model.state_dict(), ...)``); a hub ``VGGish`` state dict also carries the PCA
  as ``pproc.pca_eigen_vectors`` / ``pproc.pca_means`` (128, 1), which is then used.
- PCA (``--pca``): torchvggish's ``vggish_pca_params-970ea276.pth`` (pickled float64 NumPy
  arrays), TensorFlow's ``vggish_pca_params.npz`` (``np.savez`` of the same arrays), or a
  hub ``VGGish`` state dict (its ``pproc.*`` entries).

torch is needed here only (``pip install 'lvns-jax[convert]'``). ``.pth`` files are read with
``torch.load(weights_only=True)``; the PCA release file holds NumPy arrays, for which only the
NumPy reconstruction globals are allow-listed. ``.npz`` files are read with
``np.load(allow_pickle=False)``. No arbitrary code runs: a file that pickles anything else
(e.g. a whole ``torch.save(model)``) is refused, and what it holds is told from the pickle's
opcodes (``pickletools``), without importing or calling anything.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import zipfile
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
PCA_EXPECTED = "pca_eigen_vectors (128, 128) and pca_means (128,) or (128, 1)"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a non-zip torch.save file
_MAX_PICKLE_BYTES = 64 << 20  # object pickles of state dicts / modules are small (tensor data is apart)


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


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise WeightsError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise WeightsError(f"{what} is not a file: {path}")


def _file_kind(path: str) -> str:
    """'npz', 'npy', 'torchscript', 'badzip' or 'torch' (a torch.save file or anything else)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        return "npy"
    if not head.startswith(b"PK"):
        return "torch"
    if not zipfile.is_zipfile(path):
        return "badzip"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return "badzip"
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    return "npz"  # np.savez: one NAME.npy member per array (np.load checks each)


def _one_line(e: BaseException, limit: int = 200) -> str:
    msg = " ".join(str(e).split())
    return msg[:limit] + "..." if len(msg) > limit else msg


def _load_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, ValueError (object arrays, bad header), zlib.error, EOFError
        raise WeightsError(f"cannot read {path} as a NumPy .npz archive ({type(e).__name__}: {_one_line(e)})") from None


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_MEMO_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def _scan_pickle(f) -> tuple[list[str], set[str], Any, list[Any]]:
    """Read ONE pickle from ``f`` with ``pickletools.genops`` (no import, no call): the dotted
    names of the globals it refers to in order, the strings it holds, the root object's global
    (or None when the root is not built from a global) and the opcode arguments."""
    globals_, strings, args = [], set(), []
    memo: dict = {}
    recent: list = []  # last pushed strings, for protocol-4 STACK_GLOBAL
    root: Any = None
    undecided = True
    for op, arg, _ in pickletools.genops(f):
        name = op.name
        args.append(arg)
        found = None
        if name in ("GLOBAL", "INST"):
            mod, _, qual = str(arg).partition(" ")
            found = f"{mod}.{qual}"
        elif name == "STACK_GLOBAL" and len(recent) >= 2 and None not in recent[-2:]:
            found = f"{recent[-2]}.{recent[-1]}"
        if found is not None:
            globals_.append(found)
            if undecided:
                root, undecided = found, False
        elif undecided and name not in ("PROTO", "FRAME", "MEMOIZE") and name not in _STRING_OPS \
                and name not in _MEMO_PUT_OPS and name not in _MEMO_GET_OPS:
            undecided = False
        if name in _STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.add(value)
            recent.append(value)
        elif name in _MEMO_GET_OPS:
            recent.append(memo.get(arg))
        elif name in _MEMO_PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name not in ("PROTO", "FRAME"):
            recent.append(None)
        del recent[:-2]
    return globals_, strings, root, args


def _pickle_contents(path: str) -> tuple[list[str], set[str], Any] | None:
    """Globals, strings and root global of the object pickle of a torch.save file (zip or
    legacy format), or None when it cannot be told. Reads opcodes only."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pkl or zf.getinfo(pkl[0]).file_size > _MAX_PICKLE_BYTES:
                    return None
                data = zf.read(pkl[0])
            g, s, root, _ = _scan_pickle(io.BytesIO(data))
            return g, s, root
        with open(path, "rb") as f:
            g, s, root, args = _scan_pickle(f)
            if TORCH_LEGACY_MAGIC in args:  # legacy: magic, protocol version, sys info, object, ...
                _scan_pickle(f)
                _scan_pickle(f)
                g, s, root, _ = _scan_pickle(f)
            return g, s, root
    except Exception:  # not a pickle, truncated, ...: the caller says what torch said
        return None


_DATA_GLOBAL_PREFIXES = ("torch._utils.", "collections.", "builtins.", "__builtin__.", "numpy.",
                         "torch.nn.parameter.", "copyreg.", "_codecs.")


def _refused_pickle(path: str, e: BaseException) -> WeightsError | None:
    """A one-line explanation for a pickle that ``weights_only=True`` refused, or None."""
    found = _pickle_contents(path)
    m = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(e))
    if found is None:
        if m is None:
            return None
        globals_, strings, root = [m.group(1)], set(), None
    else:
        globals_, strings, root = found
    is_module = any(g.startswith("torch.nn.modules.") for g in globals_) or {"_modules", "_parameters"} <= strings
    candidates = ([root] if root else []) + globals_
    named = [g for g in candidates if not g.startswith(_DATA_GLOBAL_PREFIXES) and not g.endswith("Storage")]
    if m is not None:
        named.append(m.group(1))
    cls = named[0] if named else None
    if is_module:
        package = cls.split(".")[0] if cls else "its package"
        what = f"a pickled torch module ({cls})" if cls else "a pickled torch module"
        return WeightsError(
            f"{path} contains {what}, not a state dict; save it with torch.save(model.state_dict(), PATH) "
            f"(load it first where {package} is importable) and convert that file"
        )
    if cls is not None:
        return WeightsError(
            f"cannot read {path} as a PyTorch state dict: it pickles {cls}, not only tensors and NumPy arrays "
            "(lvns reads state dicts, saved with torch.save(model.state_dict(), PATH))"
        )
    return None


def safe_torch_load(path: str, what: str = "a PyTorch state dict") -> Any:
    """``torch.load(path, weights_only=True)`` (NumPy arrays allowed, nothing else executed); any failure
    is one :class:`WeightsError` line naming ``path``, ``what`` it should have been, and the cause."""
    torch = _import_torch()
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ... on wrong files
        refused = _refused_pickle(path, e)
        if refused is not None:
            raise refused from None
        msg = _one_line(e) or ("the file ends early; truncated?" if isinstance(e, EOFError) else "no message")
        raise WeightsError(f"cannot read {path} as {what} ({type(e).__name__}: {msg})") from None


def _torch_load(path: str) -> Any:
    torch = _import_torch()
    obj = safe_torch_load(path)
    if isinstance(obj, torch.jit.ScriptModule) or type(obj).__name__.startswith("RecursiveScriptModule"):
        raise WeightsError(f"{path} is a TorchScript export (e.g. a RAVE .ts), not a torchvggish state dict")
    if isinstance(obj, torch.nn.Module):  # not reachable with weights_only=True; kept as a guard
        raise WeightsError(f"{path} contains a pickled torch module ({type(obj).__name__}), not a state dict; "
                           "save it with torch.save(model.state_dict(), PATH) and convert that file")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a torchvggish state dict (a dict of tensors)")
    return obj


def _load_dict(path: str, what: str) -> tuple[dict, str]:
    """A state dict / PCA dict from a torch.save file or an .npz archive -> (dict, kind)."""
    _check_file(path, what)
    kind = _file_kind(path)
    if kind == "npz":
        return _load_npz(path), kind
    if kind == "npy":
        raise WeightsError(f"{path} is a single NumPy .npy array; expected an .npz archive with {PCA_EXPECTED} "
                           "(np.savez) or a torchvggish .pth")
    if kind == "badzip":
        raise WeightsError(f"cannot read {path}: a damaged or truncated zip archive (zip-format .pth or .npz)")
    if kind == "torchscript":
        raise WeightsError(f"{path} is a TorchScript export (e.g. a RAVE .ts), not a torchvggish state dict")
    return _torch_load(path), kind


def _to_numpy(value: Any, key: str, path: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{path}: array {key!r} has dtype {value.dtype}, expected floating point")
        arr = value.astype(np.float32)
    else:
        torch = _import_torch()
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
        arr = value.detach().cpu()
        if not arr.is_floating_point():
            raise WeightsError(f"{path}: tensor {key!r} has dtype {arr.dtype}, expected floating point")
        arr = arr.to(torch.float32).numpy()  # float64 values beyond float32 range become inf
    if not np.all(np.isfinite(arr)):
        raise WeightsError(f"{path}: tensor {key!r} contains NaN or Inf")
    return arr


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """Read and check a torchvggish state dict -> (Flax params, PCA dict or None).

    A full ``VGGish`` state dict saved with ``postprocess=True`` carries the PCA as
    ``pproc.pca_eigen_vectors`` / ``pproc.pca_means``; those are returned as the PCA.
    """
    path = os.fspath(path)
    sd, kind = _load_dict(path, "torchvggish weights")
    sd = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}
    expected = torch_shapes()
    pca_in_sd = {k: sd[f"pproc.{k}"] for k in PCA_KEYS if f"pproc.{k}" in sd}
    if set(PCA_KEYS) & set(sd) and not set(expected) & set(sd):
        raise WeightsError(f"{path} holds VGGish PCA parameters, not network weights; pass it with --pca")
    if kind == "npz" and not set(expected) & set(sd):
        raise WeightsError(f"{path} is a NumPy .npz archive ({_keys_found(sd)}), not torchvggish weights; "
                           "expected a torchvggish state dict (.pth)")
    if pca_in_sd and len(pca_in_sd) < len(PCA_KEYS):
        absent = [f"pproc.{k}" for k in PCA_KEYS if k not in pca_in_sd]
        raise WeightsError(f"{path}: the hub VGGish PCA entries are incomplete: missing {', '.join(absent)} "
                           "(expected pproc.pca_eigen_vectors (128, 128) and pproc.pca_means (128, 1))")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not (isinstance(k, str) and k.startswith("pproc."))]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        hint = "; " + _keys_found(sd)
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


def _keys_found(d: dict) -> str:
    if not d:
        return "it is empty"
    keys = list(d)
    return f"it has {', '.join(map(str, keys[:4]))}{', ...' if len(keys) > 4 else ''}"


def _check_pca(d: dict, path: str) -> dict:
    missing = [k for k in PCA_KEYS if k not in d]
    if missing:
        raise WeightsError(f"{path} is not a torchvggish PCA file: missing {', '.join(missing)} "
                           f"({_keys_found(d)}; expected {PCA_EXPECTED})")
    vec = _to_numpy(d["pca_eigen_vectors"], "pca_eigen_vectors", path)
    means = _to_numpy(d["pca_means"], "pca_means", path)
    if vec.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE):
        raise WeightsError(f"{path}: 'pca_eigen_vectors' has shape {vec.shape}, expected (128, 128)")
    if means.size != EMBEDDING_SIZE or means.shape not in ((128,), (128, 1), (1, 128)):
        raise WeightsError(f"{path}: 'pca_means' has shape {means.shape}, expected (128,) or (128, 1)")
    return {"eigen_vectors": vec.astype(np.float32), "means": means.reshape(-1).astype(np.float32)}


def read_pca(path: str | os.PathLike) -> dict:
    """Read VGGish PCA parameters -> ``{"eigen_vectors": (128, 128), "means": (128,)}`` float32.

    Accepts torchvggish's ``vggish_pca_params-970ea276.pth``, TensorFlow's
    ``vggish_pca_params.npz`` (the same float64 arrays, saved with ``np.savez``) and a hub
    ``VGGish`` state dict (``pproc.pca_eigen_vectors``, ``pproc.pca_means`` (128, 1))."""
    path = os.fspath(path)
    d, _ = _load_dict(path, "PCA parameters")
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
