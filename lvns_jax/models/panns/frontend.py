"""PANNs (CNN14) audio front end in ``jax.numpy``: resampling to 32 kHz and the log-mel spectrogram.

The reference is what ``Cnn14`` (github qiuqiangkong/audioset_tagging_cnn, pip ``panns-inference``)
computes with torchlibrosa before its first BatchNorm:

1. ``Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
   pad_mode="reflect")``: the clip is reflect-padded by 512 samples at both ends, cut into
   frames of 1024 samples every 320 (``1 + N // 320`` frames), multiplied by the periodic Hann
   window (``scipy.signal.get_window("hann", 1024, fftbins=True)``) and Fourier transformed
   (torchlibrosa uses a Conv1d with a float32 DFT matrix; we use ``jnp.fft.rfft``); power 2,
   i.e. ``re**2 + im**2`` of the 513 bins;
2. ``LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0,
   amin=1e-10, top_db=None)``: ``power @ melW`` with ``melW = librosa.filters.mel(...).T``
   (Slaney mel scale, Slaney area normalisation; rebuilt here in NumPy, see
   :func:`mel_matrix`, librosa is not needed), then ``10 * log10(max(mel, 1e-10))`` (``ref``
   1.0 subtracts 0 dB; no ``top_db`` clipping).

Audio at another rate is first resampled to 32 kHz with the resampy-``kaiser_best`` resampler of
:func:`lvns_jax.models.vggish.frontend.resample` (arbitrary integer rates; output length
``int(S * 32000 / sr)``). panns-inference itself expects 32 kHz input (its examples load audio
with ``librosa.load(sr=32000)``, whose default resampler is soxr), so at other rates any
good resampler is "the reference"; the tests compare against scipy's polyphase resampler.

Everything is float32 (no float64 island), so the front end is jit-, vmap- and
grad-able. Shapes are static: they depend only on the clip length and the sample rate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.models.vggish.frontend import _check_rate, resample, resampled_length

SAMPLE_RATE = 32000
N_FFT = 1024
HOP = 320
NUM_BANDS = 64
FMIN = 50.0
FMAX = 14000.0
AMIN = 1e-10
REF = 1.0
# CNN14 average-pools time by 2 five times (the sixth block pools 1x1): fewer than 32 frames
# leave no time step (torch's avg_pool2d fails); 32 frames = 1 + 9920 // 320.
MIN_FRAMES = 32
MIN_SAMPLES_32K = (MIN_FRAMES - 1) * HOP

_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Slaney mel filter bank (librosa.filters.mel with htk=False, norm="slaney")


def hz_to_mel(frequencies) -> np.ndarray:
    """Slaney's mel scale (librosa ``hz_to_mel(htk=False)``): linear below 1 kHz, log above."""
    f = np.asarray(frequencies, np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep, mels)


def mel_to_hz(mels) -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (librosa ``mel_to_hz(htk=False)``)."""
    m = np.asarray(mels, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_matrix(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = NUM_BANDS,
               fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax).T`` (Slaney scale and normalisation), in librosa's arithmetic.

    librosa returns float32 (its weights array is float32); this is the float64 value, which
    rounds to librosa's to within a few float32 ulps."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).T


@functools.lru_cache(maxsize=None)
def periodic_hann(n: int = N_FFT) -> np.ndarray:
    """``scipy.signal.get_window("hann", n, fftbins=True)`` (what librosa/torchlibrosa use)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / n * np.arange(n))


# ---------------------------------------------------------------------------------------------
# Lengths


def num_frames(num_samples_32k: int) -> int:
    """STFT frames of a 32 kHz clip with ``center=True`` (0 when too short to reflect-pad)."""
    n = int(num_samples_32k)
    if n <= N_FFT // 2:  # reflect padding needs more samples than the pad
        return 0
    return 1 + n // HOP


def min_samples(sample_rate: int = SAMPLE_RATE) -> int:
    """Shortest clip (samples at ``sample_rate``) that CNN14 embeds: at least 32 STFT frames at
    32 kHz after resampling (9920 samples, 0.31 s). Shorter clips embed to NaN."""
    sr = _check_rate(sample_rate)
    s = max(1, -(-MIN_SAMPLES_32K * sr // SAMPLE_RATE) - 2)
    while resampled_length(s, sr, SAMPLE_RATE) < MIN_SAMPLES_32K:
        s += 1
    return s


def embeddable(num_samples: int, sample_rate: int = SAMPLE_RATE) -> bool:
    return num_frames(resampled_length(int(num_samples), _check_rate(sample_rate), SAMPLE_RATE)) >= MIN_FRAMES


# ---------------------------------------------------------------------------------------------
# Log-mel


def power_spectrogram(audio_32k: jax.Array) -> jax.Array:
    """torchlibrosa ``Spectrogram`` (n_fft 1024, hop 320, Hann, centred, reflect, power 2):
    (..., N) -> (..., 1 + N // 320, 513) float32."""
    audio_32k = jnp.asarray(audio_32k, jnp.float32)
    n = audio_32k.shape[-1]
    frames = num_frames(n)
    if frames == 0:
        raise ValueError(f"a clip of {n} samples at 32 kHz is too short for a centred 1024-point STFT "
                         f"(needs more than {N_FFT // 2})")
    pad = [(0, 0)] * (audio_32k.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
    x = jnp.pad(audio_32k, pad, mode="reflect")
    idx = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    framed = x[..., idx] * jnp.asarray(periodic_hann(), jnp.float32)  # (..., F, 1024)
    spec = jnp.fft.rfft(framed, n=N_FFT, axis=-1)
    return jnp.real(spec) ** 2 + jnp.imag(spec) ** 2


def log_mel_32k(audio_32k: jax.Array) -> jax.Array:
    """32 kHz audio (..., N) -> CNN14 log-mel (..., 1 + N // 320, 64) float32 (dB, ref 1)."""
    power = power_spectrogram(audio_32k)
    mel = jnp.matmul(power, jnp.asarray(mel_matrix(), jnp.float32), precision=_HIGHEST)
    out = 10.0 * jnp.log10(jnp.maximum(mel, AMIN))
    if REF != 1.0:  # pragma: no cover - kept for clarity: ref 1.0 subtracts 0 dB
        out = out - 10.0 * np.log10(max(AMIN, REF))
    return out


def log_mel(audio: jax.Array, sample_rate: int) -> jax.Array:
    """Audio (..., S) at ``sample_rate`` -> resample to 32 kHz -> log-mel (..., frames, 64)."""
    sample_rate = _check_rate(sample_rate)
    return log_mel_32k(resample(audio, sample_rate, SAMPLE_RATE))


__all__ = [
    "AMIN", "FMAX", "FMIN", "HOP", "MIN_FRAMES", "MIN_SAMPLES_32K", "NUM_BANDS", "N_FFT", "SAMPLE_RATE",
    "embeddable", "hz_to_mel", "log_mel", "log_mel_32k", "mel_matrix", "mel_to_hz", "min_samples",
    "num_frames", "periodic_hann", "power_spectrogram", "resample", "resampled_length",
]
