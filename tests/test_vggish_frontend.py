"""VGGish front end (resampling, log-mel, framing) against torchvggish/resampy and by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax.models.vggish import frontend as fe
from vggish_common import audio, names, reference

RAVE_LEN = 64 * 2048


# ----------------------------------------------------------------------------- hand-worked values


def test_constants_and_counts():
    assert fe.FFT_LENGTH == 512 and fe.STFT_WINDOW == 400 and fe.STFT_HOP == 160
    assert fe.num_frames(399) == 0
    assert fe.num_frames(400) == 1
    assert fe.num_frames(559) == 1
    assert fe.num_frames(560) == 2
    assert fe.EXAMPLE_SAMPLES_16K == 15600
    assert fe.num_examples(15599, 16000) == 0
    assert fe.num_examples(15600, 16000) == 1
    assert fe.num_examples(400 + 191 * 160, 16000) == 2  # 192 frames
    assert fe.num_examples(400 + 191 * 160 - 1, 16000) == 1  # 191 frames
    # resampy's output length rule, and a RAVE clip: 131072 -> 47554 samples -> 295 frames -> 3
    assert fe.resampled_length(131072, 44100) == 47554
    assert fe.resampled_length(96000, 48000) == 32000
    assert fe.num_examples(RAVE_LEN, 44100) == 3
    assert fe.num_examples(42000, 44100) == 0


def test_window_and_mel_matrix_by_hand():
    np.testing.assert_allclose(fe.periodic_hann(4), [0.0, 0.5, 1.0, 0.5], atol=1e-15)
    assert fe.hertz_to_mel(700.0) == pytest.approx(1127.0 * math.log(2.0))
    assert fe.hertz_to_mel(0.0) == 0.0
    m = fe.mel_matrix()
    assert m.shape == (257, 64)
    assert np.all(m[0] == 0.0)  # no DC
    assert np.all(m >= 0) and m.max() <= 1.0
    # bins (31.25 Hz apart) below 125 Hz and above 7500 Hz get no weight
    hz = np.arange(257) * 31.25
    assert np.all(m[hz <= 125.0] == 0) and np.all(m[hz >= 7500.0] == 0)
    assert np.all(m[(hz > 200) & (hz < 7400)].sum(axis=1) > 0)
    # band 0 spans mel edges 0..2 (125 Hz .. ~165 Hz), triangles linear in mel: bin 4 (125 Hz)
    # is on its lower edge, bin 5 (156.25 Hz) just past its centre (~145 Hz), on the way down
    edges = np.linspace(fe.hertz_to_mel(125.0), fe.hertz_to_mel(7500.0), 66)
    assert m[4, 0] == 0.0
    expected = (edges[2] - fe.hertz_to_mel(156.25)) / (edges[2] - edges[1])
    assert 0 < expected < 1
    assert m[5, 0] == pytest.approx(expected, rel=1e-12)
    # band 1 rises there
    assert m[5, 1] == pytest.approx((fe.hertz_to_mel(156.25) - edges[1]) / (edges[2] - edges[1]), rel=1e-12)


def test_log_mel_of_silence_and_of_a_bin_centred_tone():
    lm = np.asarray(fe.log_mel(jnp.zeros((2, 1000))))
    assert lm.shape == (2, 4, 64)
    np.testing.assert_allclose(lm, np.log(0.01), rtol=0, atol=1e-7)
    # a 1000 Hz cosine sits on bin 32 of the 512-point FFT: its peak is A * sum(window) / 2
    n = np.arange(400)
    x = (0.5 * np.cos(2 * np.pi * 1000.0 / 16000.0 * n)).astype(np.float32)
    spec = np.abs(np.fft.rfft(x * fe.periodic_hann(), 512))
    expected = np.log(spec @ fe.mel_matrix() + 0.01)
    got = np.asarray(fe.log_mel(jnp.asarray(x, jnp.float32)))[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert spec[32] == pytest.approx(0.5 * 400 / 4, rel=1e-3)  # peak = A * sum(window) / 2


def test_kaiser_best_table_matches_resampy():
    ref = reference()["kaiser_best_every_64"]
    ours = fe.kaiser_best_table()
    assert ours.shape == (50 * 8192 + 1,)
    np.testing.assert_allclose(ours[::64], ref, rtol=0, atol=1e-13)


def test_sample_rate_validation():
    x = jnp.zeros((1, 20000))
    for bad in (0, -16000, 44100.5, float("nan")):
        with pytest.raises(ValueError):
            fe.waveform_to_examples(x, bad)
    with pytest.raises(TypeError):
        fe.waveform_to_examples(x, "44100")
    assert fe.waveform_to_examples(x, 44100.0).shape == fe.waveform_to_examples(x, 44100).shape


# ----------------------------------------------------------------------------- resampler


@pytest.mark.parametrize("name", ["square_44k", "chirp_44k", "speech_44k", "speech_48k", "speech_22k"])
def test_resampler_matches_resampy(name):
    x, sr = audio(name)
    ref = reference()[f"resampled/{name}"]
    y = np.asarray(jax.jit(lambda a: fe.resample(a, sr))(x))
    assert y.shape == ref.shape
    err = np.abs(y - ref).max()
    assert err <= 3e-6, f"{name}: max abs error vs resampy {err:.3g}"


def test_resampler_filters_and_passes():
    sr = 44100
    t = np.arange(44100) / sr
    lo = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)  # in band: kept
    hi = np.sin(2 * np.pi * 12000.0 * t).astype(np.float32)  # above 8 kHz: removed, not aliased
    y_lo, y_hi = np.asarray(fe.resample(jnp.stack([lo, hi]), sr))
    t16 = np.arange(len(y_lo)) / 16000.0
    mid = slice(1000, -1000)  # away from the zero-padded ends
    np.testing.assert_allclose(y_lo[mid], np.sin(2 * np.pi * 1000.0 * t16)[mid], atol=2e-3)
    assert np.abs(y_hi[mid]).max() < 1e-4  # > 80 dB down
    # a constant stays constant in the interior
    y_dc = np.asarray(fe.resample(jnp.full((1, 20000), 0.25), 48000))[0]
    np.testing.assert_allclose(y_dc[300:-300], 0.25, atol=1e-4)


@pytest.mark.parametrize("rate", [22050, 48000, 8000])
def test_resampler_gather_path_equals_block_path(monkeypatch, rate):
    """The block matmul (with k blocks grouped into super-blocks at 48 kHz, M/L = 3/1, and
    8 kHz, upsampling 1/2) against the per-output gather of the same resampy weights."""
    k_expected = {22050: 1, 48000: 100, 8000: 50}
    plan = fe._block_plan(rate, 16000)
    M, L = fe._phase_weights(rate, 16000)[:2]
    assert plan[0] // M == plan[1] // L and plan[0] // M >= k_expected[rate] and plan[2] <= 3
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9000)).astype(np.float32))
    block = np.asarray(fe.resample(x, rate))
    monkeypatch.setattr(fe, "_MAX_BLOCK_MATRIX", 0)
    fe._block_plan.cache_clear()
    try:
        assert fe._block_plan(rate, 16000) is None
        gather = np.asarray(fe.resample(x, rate))
    finally:
        monkeypatch.undo()
        fe._block_plan.cache_clear()
    assert gather.shape == block.shape
    np.testing.assert_allclose(gather, block, atol=2e-6)


def test_resample_identity_and_tiny_inputs():
    x = jnp.arange(10.0)[None]
    np.testing.assert_array_equal(fe.resample(x, 16000), x)
    assert fe.resample(jnp.zeros((3, 2)), 44100).shape == (3, 0)


# ----------------------------------------------------------------------------- log-mel parity


def test_log_mel_matches_torchvggish_at_16k():
    """torchvggish's own front end on the generated sounds: max abs error <= 1e-4."""
    worst = 0.0
    for name in names(16000):
        x, sr = audio(name)
        ref = reference()[f"logmel/{name}"]
        ex = np.asarray(jax.jit(lambda a: fe.waveform_to_examples(a, 16000))(x))
        assert ex.shape == ref.shape, name
        err = float(np.abs(ex - ref).max())
        worst = max(worst, err)
        assert err <= 1e-4, f"{name}: log-mel max abs error {err:.3g}"
    print(f"log-mel @16 kHz: max abs error {worst:.3g}")


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_log_mel_close_to_torchvggish_through_resampler(rate):
    for name in names(rate):
        x, sr = audio(name)
        ref = reference()[f"logmel/{name}"]
        ex = np.asarray(jax.jit(lambda a: fe.waveform_to_examples(a, sr))(x))
        assert ex.shape == ref.shape, name
        # resampler rounding (~1e-6) is amplified by log(mel + 0.01) in empty bands only
        assert np.abs(ex - ref).max() <= 1e-2, name
        assert np.abs(ex - ref).mean() <= 5e-4, name


def test_float32_front_end_is_close():
    x, _ = audio("tone_16k")
    ref = reference()["logmel/tone_16k"]
    ex = np.asarray(fe.waveform_to_examples(x, 16000, high_precision=False))
    assert np.abs(ex - ref).max() <= 2e-3


# ----------------------------------------------------------------------------- batching & transforms


def test_examples_shapes_batch_jit_vmap():
    clips = [audio(n)[0] for n in ("speech_44k", "square_44k", "noise_44k")]
    x = jnp.asarray(np.stack(clips))
    f = lambda a: fe.waveform_to_examples(a, 44100)  # noqa: E731
    batched = np.asarray(jax.jit(f)(x))
    assert batched.shape == (3, 3, 96, 64) and batched.dtype == np.float32
    eager = np.asarray(f(x))
    np.testing.assert_allclose(eager, batched, atol=1e-5)
    vm = np.asarray(jax.jit(jax.vmap(f))(x))
    np.testing.assert_allclose(vm, batched, atol=1e-5)
    for i, c in enumerate(clips):
        np.testing.assert_allclose(np.asarray(jax.jit(f)(c[None]))[0], batched[i], atol=1e-5)


def test_short_clips_have_zero_examples_without_crashing():
    for n in (0, 10, 239, 400, 15599):
        ex = fe.waveform_to_examples(jnp.zeros((2, n)), 16000)
        assert ex.shape == (2, 0, 96, 64)
    assert fe.waveform_to_examples(jnp.zeros((1, 42000)), 44100).shape == (1, 0, 96, 64)
