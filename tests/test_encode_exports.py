"""`lvns encode` with v1-era, streaming and --sr exports: the latents decode with the converted model."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from lvns_jax.models import rave  # noqa: E402
from lvns_jax.cli import main  # noqa: E402
from lvns_jax.container import load_latent_file  # noqa: E402
from lvns_jax.encode import encode_clip, load_model, reset_caches  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rave_exports")


def ts(v):
    return os.path.join(ROOT, v + ".ts")


def _wavs(folder, sr, n=3, seconds=1.0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(os.path.join(folder, f"clip{i}.wav"), x.astype(np.float32), sr)
    return folder


@pytest.mark.parametrize("v", ["1.0/plain", "v1/cached_stereo", "2.3.1/v2_streaming", "2.2.2/v2_sr88200"])
def test_encoded_latents_decode_with_the_converted_model(v, tmp_path):
    dec = rave.load(ts(v))
    rate = dec.meta["export_sample_rate"]       # the rate the export's encode takes
    folder = _wavs(str(tmp_path / "wav"), rate)
    out = str(tmp_path / "lat.npz")
    assert main(["encode", folder, "--rave", ts(v), "--out", out, "--no-progress"]) == 0
    z = load_latent_file(out)
    assert z.ndim == 3 and z.shape[0] == 3 and z.shape[1] == dec.latent_size
    audio = np.asarray(dec.decode(z.astype(np.float32), noise=False))
    assert audio.shape == (3, z.shape[2] * dec.hop) and np.isfinite(audio).all() and np.abs(audio).max() > 0


@pytest.mark.parametrize("v", ["v1/cached", "2.3.1/v2_streaming"])
def test_streaming_encode_does_not_depend_on_the_previous_clip(v):
    model = load_model(ts(v))
    assert reset_caches(model) > 0
    hop = int(model.encode_params[3])
    rng = np.random.default_rng(1)
    a = (0.3 * rng.standard_normal(8 * hop)).astype(np.float32)
    b = (0.3 * rng.standard_normal(8 * hop)).astype(np.float32)
    first = encode_clip(model, a, hop, seed=0)
    encode_clip(model, b, hop, seed=0)                 # another clip in between
    again = encode_clip(model, a, hop, seed=0)
    np.testing.assert_array_equal(first, again)
    # without the reset the state carries over (what the export does on its own)
    with torch.no_grad():
        torch.manual_seed(0)
        model.encode(torch.from_numpy(b).reshape(1, 1, -1))
        torch.manual_seed(0)
        carried = model.encode(torch.from_numpy(a).reshape(1, 1, -1)).numpy()[0]
    assert np.abs(carried - first).max() > 1e-6


def test_non_streaming_export_has_no_caches():
    assert reset_caches(load_model(ts("v1/plain"))) == 0
