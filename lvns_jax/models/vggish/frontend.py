"""VGGish audio front end in ``jax.numpy``: resampling, log-mel spectrogram, framing.

Everything here has static shapes (they depend only on the clip length and the sample
rate, which are Python ints at trace time), so the functions jit, vmap and batch.

The reference is torchvggish's ``vggish_input.waveform_to_examples`` (identical to Google's
``vggish_input.py``):

1. resample to 16 kHz with ``resampy.resample(x, sr, 16000)`` (filter ``kaiser_best``);
2. STFT magnitude: 400-sample (25 ms) periodic Hann window, 160-sample (10 ms) hop, no
   padding (incomplete frames dropped), 512-point real FFT;
3. 64 triangular mel bands between 125 and 7500 Hz on the HTK mel scale
   ``1127 ln(1 + f/700)``, the DC bin excluded;
4. ``log(mel + 0.01)``;
5. non-overlapping examples of 96 frames (0.96 s); an incomplete tail is dropped.

Resampler
---------
resampy interpolates every output sample from a windowed sinc (a Kaiser-windowed sinc of 50
zero crossings, tabulated at 2**13 points per crossing, linearly interpolated in the table,
with the table stride truncated to an integer). For a rational ratio ``sr/16000 = M/L`` (in
lowest terms) the output sample ``q*L + p`` depends on inputs ``q*M + n_p + r`` with weights
that depend on the phase ``p`` only. We reproduce resampy's arithmetic *exactly* (same table,
same truncations, same zero padding at both ends) in NumPy at trace time to get one weight
vector per phase, and apply them as one strided block matmul: the padded signal is cut into
blocks of ``M`` samples, ``c`` consecutive blocks form the window of a block of ``L`` outputs,
``y[q] = window[q] @ W`` with ``W`` of shape ``(c*M, L)`` (when the filter spans many blocks,
as at 48 kHz where ``M/L = 3/1``, ``k`` blocks are grouped into one of ``k*M`` inputs and ``k*L``
outputs so that ``c`` stays ~2). For awkward rates whose reduced ratio
has a large ``L`` (e.g. 44101 Hz) ``W`` would be huge, and a per-output gather is used instead
(exact as well, but slower and more memory hungry).

The ``kaiser_best`` table is rebuilt from its parameters (``beta = 12.984585247041892``,
``rolloff = 0.9173473712608761``, 50 zero crossings, precision 2**13): it matches the table
shipped with resampy 0.4.3 to 2e-15, so resampy is not needed at run time.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# VGGish constants (vggish_params.py)
SAMPLE_RATE = 16000
STFT_WINDOW = 400  # 25 ms at 16 kHz
STFT_HOP = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512  # 2 ** ceil(log2(400))
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames, hop 96 (no overlap)
EXAMPLE_SAMPLES_16K = STFT_WINDOW + (EXAMPLE_FRAMES - 1) * STFT_HOP  # 15600 samples

# resampy's kaiser_best filter
KAISER_BEST_BETA = 12.984585247041892
KAISER_BEST_ROLLOFF = 0.9173473712608761
KAISER_BEST_ZEROS = 50
KAISER_BEST_PRECISION = 2**13

# Largest phase-weight matrix (entries) for the block-matmul resampler; above it we gather.
_MAX_BLOCK_MATRIX = 1 << 23

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"sample_rate must be a number (a static Python int), got {type(sample_rate).__name__}")
    sr = float(sample_rate)
    if not math.isfinite(sr) or sr <= 0 or sr != int(sr):
        raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sr)


# ---------------------------------------------------------------------------------------------
# Resampling


@functools.lru_cache(maxsize=None)
def kaiser_best_table() -> np.ndarray:
    """Right wing of resampy's ``kaiser_best`` interpolation filter (float64, 409601 taps)."""
    n = KAISER_BEST_ZEROS * KAISER_BEST_PRECISION
    sinc = KAISER_BEST_ROLLOFF * np.sinc(KAISER_BEST_ROLLOFF * np.linspace(0.0, KAISER_BEST_ZEROS, n + 1))
    taper = np.kaiser(2 * n + 1, KAISER_BEST_BETA)[n:]
    return taper * sinc


def resampled_length(num_samples: int, sr_orig: int, sr_new: int = SAMPLE_RATE) -> int:
    """Output length of ``resampy.resample`` (same float expression, so the same rounding)."""
    if sr_orig == sr_new:
        return int(num_samples)
    return int(num_samples * float(sr_new) / float(sr_orig))


@functools.lru_cache(maxsize=32)
def _phase_weights(sr_orig: int, sr_new: int):
    """resampy's weights for each output phase.

    Returns ``(M, L, n_p, W, left)`` where the ratio is ``sr_orig/sr_new = M/L`` in lowest
    terms, output ``q*L + p`` reads inputs ``q*M + n_p[p] + r`` for ``r`` in
    ``[-left, W.shape[1] - left)`` with weights ``W[p]`` (float64).
    """
    g = math.gcd(sr_orig, sr_new)
    M, L = sr_orig // g, sr_new // g
    win = kaiser_best_table()
    num_table = KAISER_BEST_PRECISION
    sample_ratio = float(sr_new) / sr_orig
    if sample_ratio < 1:
        win = sample_ratio * win
    delta = np.diff(win, append=win[-1])
    nwin = win.shape[0]
    scale = min(1.0, sample_ratio)
    step = int(scale * num_table)

    def wing(frac):
        index_frac = frac * num_table
        offset = int(index_frac)
        eta = index_frac - offset
        count = (nwin - offset) // step
        idx = offset + np.arange(count) * step
        return win[idx] + eta * delta[idx]

    n_p = np.zeros(L, dtype=np.int64)
    lefts, rights = [], []
    for p in range(L):
        n_p[p] = (p * M) // L
        frac = scale * (((p * M) % L) / L)
        lefts.append(wing(frac))  # weights of x[n - i], i = 0, 1, ...
        rights.append(wing(scale - frac))  # weights of x[n + 1 + k], k = 0, 1, ...
    kl = max(len(a) for a in lefts)
    kr = max(len(a) for a in rights)
    W = np.zeros((L, kl + kr), dtype=np.float64)
    for p in range(L):
        a, b = lefts[p], rights[p]
        W[p, kl - len(a) : kl] = a[::-1]  # r = -(len(a)-1) ... 0
        W[p, kl : kl + len(b)] = b  # r = 1 ... len(b)
    return M, L, n_p, W, kl - 1


@functools.lru_cache(maxsize=32)
def _block_plan(sr_orig: int, sr_new: int):
    """``(Mk, Lk, c, left, mat)``: outputs ``q*Lk + j`` = ``windows[q] @ mat[:, j]`` where
    ``windows[q]`` is ``c`` consecutive blocks of ``Mk`` padded inputs starting at block ``q``.

    When the filter is much longer than one block of the reduced ratio (e.g. 48 kHz, where
    ``M/L = 3/1``), ``k`` consecutive blocks are grouped into one super-block of ``Mk = k*M``
    inputs and ``Lk = k*L`` outputs, so a window spans ~2 super-blocks instead of ~100 tiny
    ones (the same arithmetic, far fewer slices to compile)."""
    M, L, n_p, W, left = _phase_weights(sr_orig, sr_new)
    K = W.shape[1]
    for k in dict.fromkeys((max(1, -(-K // M)), 1)):
        Mk, Lk = k * M, k * L
        span = (k - 1) * M + int(n_p.max()) + K  # window of one super-block, from q*Mk - left
        c = -(-span // Mk)  # consecutive super-blocks per window
        if c * Mk * Lk > _MAX_BLOCK_MATRIX:
            continue
        mat = np.zeros((c * Mk, Lk), dtype=np.float64)
        for j in range(k):
            for p in range(L):
                start = j * M + n_p[p]
                mat[start : start + K, j * L + p] = W[p]
        return Mk, Lk, c, left, mat.astype(np.float32)
    return None


def resample(audio: jax.Array, sr_orig: int, sr_new: int = SAMPLE_RATE) -> jax.Array:
    """Resample ``audio`` (..., S) from ``sr_orig`` to ``sr_new`` like ``resampy`` ``kaiser_best``.

    Rates are static Python ints. Output length ``int(S * sr_new / sr_orig)`` as in resampy.
    """
    sr_orig = _check_rate(sr_orig)
    sr_new = _check_rate(sr_new)
    audio = jnp.asarray(audio, jnp.float32)
    if sr_orig == sr_new:
        return audio
    S = audio.shape[-1]
    n_out = resampled_length(S, sr_orig, sr_new)
    if n_out < 1:
        return jnp.zeros(audio.shape[:-1] + (0,), jnp.float32)
    batch_shape = audio.shape[:-1]
    x = audio.reshape((-1, S))
    plan = _block_plan(sr_orig, sr_new)
    if plan is not None:
        M, L, c, left, mat = plan
        Q = -(-n_out // L)  # output blocks
        total = (Q + c - 1) * M  # padded input length: blocks 0 .. Q+c-2
        right = total - left - S
        if right < 0:  # input longer than needed (never with resampy's length rule); trim
            x = x[:, : S + right]
            right = 0
        xp = jnp.pad(x, ((0, 0), (left, right)))
        blocks = xp.reshape(x.shape[0], Q + c - 1, M)
        windows = jnp.concatenate([blocks[:, i : i + Q] for i in range(c)], axis=-1)  # (B, Q, c*M)
        y = jnp.einsum("bqk,kl->bql", windows, jnp.asarray(mat), precision=_HIGHEST)
        y = y.reshape(x.shape[0], Q * L)[:, :n_out]
    else:
        y = _resample_gather(x, sr_orig, sr_new, n_out)
    return y.reshape(batch_shape + (n_out,))


def _resample_gather(x: jax.Array, sr_orig: int, sr_new: int, n_out: int) -> jax.Array:
    M, L, n_p, W, left = _phase_weights(sr_orig, sr_new)
    K = W.shape[1]
    t = np.arange(n_out)
    phase = t % L
    base = (t // L) * M + n_p[phase]  # index of x[n] for r = 0
    S = x.shape[-1]
    right = max(0, int(base.max()) + K - left - S)
    xp = jnp.pad(x, ((0, 0), (left, right)))
    idx = jnp.asarray(base[:, None] + np.arange(K)[None, :], jnp.int32)  # padded coordinates
    w = jnp.asarray(W.astype(np.float32))[jnp.asarray(phase, jnp.int32)]  # (n_out, K)

    def one(clip):
        return jnp.einsum("tk,tk->t", clip[idx], w, precision=_HIGHEST)

    return jax.lax.map(one, xp)


# ---------------------------------------------------------------------------------------------
# Log-mel spectrogram


def hertz_to_mel(frequencies_hertz):
    """HTK mel scale, as VGGish: ``1127 * ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hertz, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def mel_matrix() -> np.ndarray:
    """(257, 64) float64 matrix mapping STFT magnitudes to VGGish's mel bands."""
    num_bins = FFT_LENGTH // 2 + 1
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2.0, num_bins))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    m = np.maximum(0.0, np.minimum(rising, falling))
    m[0, :] = 0.0  # no DC
    return m


@functools.lru_cache(maxsize=None)
def periodic_hann(n: int = STFT_WINDOW) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / n * np.arange(n))


def num_frames(num_samples_16k: int) -> int:
    """Number of complete STFT frames of a 16 kHz signal (0 when shorter than one window)."""
    if num_samples_16k < STFT_WINDOW:
        return 0
    return 1 + (num_samples_16k - STFT_WINDOW) // STFT_HOP


def num_examples(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of 0.96 s examples VGGish makes of a clip of ``num_samples`` at ``sample_rate``."""
    n16 = resampled_length(num_samples, _check_rate(sample_rate))
    return num_frames(n16) // EXAMPLE_FRAMES


def log_mel(audio_16k: jax.Array, frames: int | None = None, high_precision: bool = True) -> jax.Array:
    """Log-mel spectrogram of 16 kHz audio (..., N) -> (..., frames, 64) float32.

    ``frames`` defaults to every complete frame; fewer may be asked for (the first ones).

    ``high_precision=True``: the exact front end. The window, FFT, mel projection and log run in
    float64 inside a local ``jax.enable_x64`` island (inputs and outputs stay float32, the rest
    of the program is unaffected), as the NumPy reference does: ~1e-6 from torchvggish even on
    loud pure tones. The island is jit- and vmap-able but not differentiable.

    ``high_precision=False``: the float32 front end (the same steps in float32, XLA's float32
    FFT): differentiable, runs on every backend (XLA:TPU has no float64 FFT) and on CPU ~3x
    faster than the island (``experiments/speed``; a windowed-DFT matmul instead of the FFT
    was measured slower on CPU, 29 against 16 ms per 25 clips, though 5x more accurate).
    Its float32 rounding (about 1e-7 of the loudest bin) is amplified up to 100x by
    ``log(mel + 0.01)`` in near-empty bands: loud pure tones differ from the reference by up to
    ~5e-4 there, rel. L2 ~1e-5 over whole examples; embeddings agree to a cosine of
    0.99999999997, but a search's survivors drift apart after a few generations at the VCTK size
    (near-ties in the sparseness ranking flip; ``experiments/precision``), which is why the
    exact island stays the CPU default.
    """
    audio_16k = jnp.asarray(audio_16k, jnp.float32)
    n = audio_16k.shape[-1]
    avail = num_frames(n)
    frames = avail if frames is None else int(frames)
    if frames > avail:
        raise ValueError(f"asked for {frames} frames, a signal of {n} samples has {avail}")
    if frames == 0:
        return jnp.zeros(audio_16k.shape[:-1] + (0, NUM_BANDS), jnp.float32)
    idx = np.arange(frames)[:, None] * STFT_HOP + np.arange(STFT_WINDOW)[None, :]
    framed = audio_16k[..., idx]  # (..., F, 400)
    if not high_precision:
        return _log_mel_frames(framed, jnp.float32)
    with jax.enable_x64(True):
        out = _log_mel_frames(framed.astype(jnp.float64), jnp.float64).astype(jnp.float32)
    return out


def _log_mel_frames(framed: jax.Array, dtype) -> jax.Array:
    windowed = framed * jnp.asarray(periodic_hann(), dtype)
    spec = jnp.abs(jnp.fft.rfft(windowed, n=FFT_LENGTH, axis=-1))  # (..., F, 257)
    mel = jnp.matmul(spec, jnp.asarray(mel_matrix(), dtype), precision=_HIGHEST)
    return jnp.log(mel + LOG_OFFSET)


def examples_from_16k(audio_16k: jax.Array, high_precision: bool = True) -> jax.Array:
    """16 kHz audio (..., N) -> VGGish input examples (..., n_examples, 96, 64)."""
    n_ex = num_frames(audio_16k.shape[-1]) // EXAMPLE_FRAMES
    lm = log_mel(audio_16k, frames=n_ex * EXAMPLE_FRAMES, high_precision=high_precision)
    return lm.reshape(lm.shape[:-2] + (n_ex, EXAMPLE_FRAMES, NUM_BANDS))


def waveform_to_examples(audio: jax.Array, sample_rate: int, high_precision: bool = True) -> jax.Array:
    """Audio (..., S) at ``sample_rate`` -> examples (..., n_examples, 96, 64) float32.

    The JAX counterpart of torchvggish's ``vggish_input.waveform_to_examples`` for mono clips
    (a leading batch is allowed; channels are not mixed down here). ``n_examples`` is
    :func:`num_examples` and may be 0 for clips shorter than 0.975 s.
    """
    sample_rate = _check_rate(sample_rate)
    x = resample(audio, sample_rate, SAMPLE_RATE)
    return examples_from_16k(x, high_precision=high_precision)
