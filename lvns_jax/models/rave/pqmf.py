"""Pseudo-QMF multiband synthesis (RAVE's ``CachedPQMF.inverse``), channels-last.

Synthesis of M bands x (B, T, M) into (B, T*M) samples, in the polyphase form RAVE exports use:
flip the sign of odd bands at even time steps, one convolution with the polyphase synthesis
filters (M -> M channels, taps = 512/M + 1), gain M, reverse the channel order and interleave
the M output phases in time.

The prototype low-pass is a Kaiser-window FIR whose cut-off minimises the near-perfect-
reconstruction objective of Lin & Vaidyanathan (IEEE SPL 1998); it is only needed to build an
untrained decoder, converted models carry the exported filter weights.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from lvns_jax.models.precision import FLOAT32, Policy
from lvns_jax.models.rave.blocks import conv1d


def _kaiser_lowpass(wc: float, atten: float, n_taps: int | None = None) -> np.ndarray:
    from scipy.signal import firwin, kaiserord

    n_est, beta = kaiserord(atten, wc / np.pi)
    n_est = 2 * (n_est // 2) + 1
    n = n_taps if n_taps is not None else n_est
    return firwin(n, wc, window=("kaiser", beta), scale=False, fs=2 * np.pi)


def prototype_filter(atten: float, n_band: int) -> np.ndarray:
    from scipy.optimize import fmin

    def objective(w):
        w = float(np.asarray(w).reshape(-1)[0])
        h = _kaiser_lowpass(w, atten)
        g = np.convolve(h, h[::-1], "full")
        g = np.abs(g[g.shape[-1] // 2::2 * n_band][1:])
        return float(np.max(g))

    wc = float(np.asarray(fmin(objective, 1.0 / n_band, disp=0)).reshape(-1)[0])
    return _kaiser_lowpass(wc, atten)


def synthesis_weight(n_band: int, atten: float = 100.0) -> np.ndarray:
    """Polyphase synthesis kernel, (taps, M, M) channels-last (= torch inverse_conv.weight^T)."""
    return _synthesis_weight(int(n_band), float(atten)).copy()


@functools.lru_cache(maxsize=8)
def _synthesis_weight(n_band: int, atten: float) -> np.ndarray:
    h = prototype_filter(atten, n_band).astype(np.float32)
    n = h.shape[-1]
    k = np.arange(n_band)[:, None]
    t = np.arange(-(n // 2), n // 2 + 1)[None, :]
    phase = ((-1.0) ** k) * math.pi / 4
    hk = 2 * h[None, :] * np.cos((2 * k + 1) * math.pi / (2 * n_band) * t + phase)
    # centre-pad to the next power of two
    n2 = 2 ** math.ceil(math.log2(n))
    pad = n2 - n
    hk = np.pad(hk, ((0, 0), (pad // 2, pad // 2 + pad % 2)))
    # polyphase synthesis filters: w[j, c, t] = flip(hk)[c, t*M + j]
    hf = hk[:, ::-1]
    w = hf.reshape(n_band, n2 // n_band, n_band).transpose(2, 0, 1)    # (out j, in c, taps)
    if w.shape[-1] % 2 == 0:
        w = np.pad(w, ((0, 0), (0, 0), (0, 1)))
    return np.ascontiguousarray(w.transpose(2, 1, 0)).astype(np.float32)  # (taps, in, out)


def pqmf_inverse(x, weight, pad, policy: Policy = FLOAT32):
    """x (B, T, M) bands -> (B, T*M) waveform. weight (taps, M, M); pad (left, right);
    ``policy``: matmul precision (default float32)."""
    B, T, M = x.shape
    if M == 1:
        return x[..., 0]
    sign = np.ones((T, M), np.float32)
    sign[0::2, 1::2] = -1.0
    x = x * jnp.asarray(sign)
    y = conv1d(x, weight, None, 1, 1, 1, tuple(pad), policy) * M
    y = y[..., ::-1]
    return y.reshape(B, -1)
