"""Convert a PANNs CNN14 checkpoint (``Cnn14_mAP=0.431.pth``) to Flax params (orbax + meta.json).

Usage: ``lvns convert panns Cnn14_mAP=0.431.pth --out weights/panns``

Accepted files: the official checkpoint (zenodo record 3987831, what panns-inference downloads
to ``~/panns_data``), a ``torch.save`` of a dict whose ``"model"`` entry is the state dict of
``Cnn14`` (``{"model": model.state_dict(), ...}``, as audioset_tagging_cnn's ``main.py`` saves),
or a bare ``Cnn14`` state dict; ``module.`` prefixes (``DataParallel``) are stripped.

The state dict holds, besides the network, torchlibrosa's front-end buffers
(``spectrogram_extractor.stft.conv_real/conv_imag.weight``, ``logmel_extractor.melW``) and the
AudioSet classifier ``fc_audioset``: the front-end tensors are checked against our front end
(so that a checkpoint of another configuration, e.g. ``Cnn14_16k`` at 16 kHz, is refused rather
than silently mis-used) and dropped with ``fc_audioset`` and ``num_batches_tracked``.

torch is needed here only (``pip install 'lvns-jax[convert]'``). The file is read with
``torch.load(map_location="cpu", weights_only=True)`` (plus the NumPy globals needed for plain
arrays, in case a checkpoint carries sampler state): no arbitrary code runs, and a file that
pickles anything else is refused with one line (see :mod:`lvns_jax.models.vggish.convert`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lvns_jax.errors import WeightsError
from lvns_jax.models.panns import frontend
from lvns_jax.models.panns.model import ARCHITECTURE, KIND
from lvns_jax.models.panns.network import BLOCKS, EMBEDDING_SIZE, param_shapes
from lvns_jax.models.vggish.convert import _check_file, _file_kind, _keys_found, _to_numpy, safe_torch_load
from lvns_jax.weights_io import save_params, sha256_of

FORMAT_VERSION = 1
# sha256 prefixes of known release files (zenodo record 3987831)
RELEASE_FILES: dict[str, str] = {}
DROPPED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "fc_audioset.")
FRONTEND_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                 "logmel_extractor.melW")
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def torch_shapes() -> dict[str, tuple[int, ...]]:
    """Expected ``Cnn14`` state-dict keys (network part) and shapes, mapped from our params."""
    out: dict[str, tuple[int, ...]] = {}
    shapes = param_shapes()

    def bn(prefix, c):
        for t in _BN_NAMES:
            out[f"{prefix}.{t}"] = (c,)

    bn("bn0", 64)
    for name, _, _ in BLOCKS:
        for conv in ("conv1", "conv2"):
            kh, kw, cin, cout = shapes[name][conv]["kernel"]
            out[f"{name}.{conv}.weight"] = (cout, cin, kh, kw)
        bn(f"{name}.bn1", shapes[name]["bn1"]["scale"][0])
        bn(f"{name}.bn2", shapes[name]["bn2"]["scale"][0])
    out["fc1.weight"] = (EMBEDDING_SIZE, 2048)
    out["fc1.bias"] = (EMBEDDING_SIZE,)
    return out


def _flax_path(key: str) -> tuple[list[str], str]:
    """torch key -> (flax path, leaf name)."""
    parts = key.split(".")
    leaf = parts[-1]
    mods = parts[:-1]
    if mods[-1].startswith("bn"):
        return mods, _BN_NAMES[leaf]
    if mods[-1].startswith("conv"):
        return mods, "kernel"
    return mods, "kernel" if leaf == "weight" else "bias"


def _torch_load(path: str) -> Any:
    return safe_torch_load(path, "a PANNs checkpoint")


def _unwrap(obj: Any, path: str) -> dict:
    """The Cnn14 state dict inside a loaded checkpoint (``{"model": sd, ...}`` or a bare sd)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise WeightsError(f"{path} holds a {type(obj).__name__}, expected a PANNs checkpoint "
                       "(a dict with 'model': the Cnn14 state dict)")


def _check_frontend(sd: dict, path: str) -> None:
    """The checkpoint's torchlibrosa buffers must be those of our 32 kHz / 1024 / 64-band front end."""
    n_bins = frontend.N_FFT // 2 + 1
    if "logmel_extractor.melW" in sd:
        melW = _to_numpy(sd["logmel_extractor.melW"], "logmel_extractor.melW", path)
        if melW.shape != (n_bins, frontend.NUM_BANDS):
            raise WeightsError(
                f"{path}: logmel_extractor.melW has shape {melW.shape}, expected ({n_bins}, {frontend.NUM_BANDS}) "
                "(32 kHz, n_fft 1024, 64 mel bands): only the 32 kHz Cnn14 (e.g. Cnn14_mAP=0.431.pth) is supported")
        ours = frontend.mel_matrix()
        err = float(np.abs(melW - ours).max() / np.abs(ours).max())
        if err > 1e-4:
            raise WeightsError(f"{path}: logmel_extractor.melW is not the 32 kHz 64-band 50-14000 Hz Slaney filter "
                               f"bank of Cnn14 (max relative difference {err:.2g}); this checkpoint's front end "
                               "differs from ours")
    key = "spectrogram_extractor.stft.conv_real.weight"
    if key in sd:
        shape = tuple(getattr(sd[key], "shape", ()))
        if shape != (n_bins, 1, frontend.N_FFT):
            raise WeightsError(f"{path}: {key} has shape {shape}, expected ({n_bins}, 1, {frontend.N_FFT}) "
                               "(n_fft 1024): only the 32 kHz Cnn14 is supported")


def read_state_dict(source: str | os.PathLike | dict, where: str | None = None) -> dict:
    """Read and check a Cnn14 checkpoint (a path, or an already loaded dict) -> params tree (NumPy float32)."""
    if isinstance(source, dict):
        path = where or "<state dict>"
        obj = source
    else:
        path = os.fspath(source)
        _check_file(path, "PANNs checkpoint")
        kind = _file_kind(path)
        if kind == "badzip":
            raise WeightsError(f"cannot read {path}: a damaged or truncated zip archive (zip-format .pth)")
        if kind == "torchscript":
            raise WeightsError(f"{path} is a TorchScript export (e.g. a RAVE .ts), not a PANNs Cnn14 checkpoint")
        if kind in ("npz", "npy"):
            raise WeightsError(f"{path} is a NumPy file, not a PANNs Cnn14 checkpoint (.pth)")
        obj = _torch_load(path)
    sd = _unwrap(obj, path)
    sd = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}
    expected = torch_shapes()
    missing = [k for k in expected if k not in sd]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise WeightsError(f"{path} is not a PANNs Cnn14 state dict: missing {len(missing)} of {len(expected)} "
                           f"tensors ({shown}); {_keys_found(sd)}")
    unexpected = [k for k in sd if k not in expected and not (isinstance(k, str) and (
        k.startswith(DROPPED_PREFIXES) or k.endswith(".num_batches_tracked")))]
    if unexpected:
        shown = ", ".join(map(str, unexpected[:4])) + (", ..." if len(unexpected) > 4 else "")
        raise WeightsError(f"{path}: unexpected tensors for Cnn14 ({shown}); another PANNs architecture?")
    _check_frontend(sd, path)
    params: dict = {}
    for key, shape in expected.items():
        arr = _to_numpy(sd[key], key, path)
        if tuple(arr.shape) != tuple(shape):
            raise WeightsError(f"{path}: tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        mods, leaf = _flax_path(key)
        if arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        elif arr.ndim == 2:
            arr = arr.T
        node = params
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = np.ascontiguousarray(arr, dtype=np.float32)
    return params


def convert(pth_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Convert a PANNs Cnn14 checkpoint into ``out_dir`` (params/ + meta.json); returns the meta."""
    pth_path = os.fspath(pth_path)
    params = read_state_dict(pth_path)
    sha = sha256_of(pth_path)
    meta: dict = {
        "kind": KIND,
        "architecture": ARCHITECTURE,
        "format_version": FORMAT_VERSION,
        "source": os.path.abspath(pth_path),
        "sha256": sha,
        "trained": True,
        "sample_rate": frontend.SAMPLE_RATE,
        "embedding_size": EMBEDDING_SIZE,
        "frontend": {"n_fft": frontend.N_FFT, "hop": frontend.HOP, "mel_bins": frontend.NUM_BANDS,
                     "fmin": frontend.FMIN, "fmax": frontend.FMAX},
    }
    if RELEASE_FILES.get(sha[:8]):
        meta["release"] = RELEASE_FILES[sha[:8]]
    save_params(out_dir, {"params": params}, meta)
    return meta
