"""`lvns encode` (folder of audio -> RAVE latents) and the `dataset` container init (.npz / original .h5).

Audio is generated here with numpy + soundfile; the encoder is a small random-init acids-rave export
from tests/fixtures/rave (44.1 kHz, hop 2048, latent size 4), run with torch like a user's `.ts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from lvns_jax import cli, container, encode
from lvns_jax.errors import ConfigError, LvnsError

torch = pytest.importorskip("torch")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rave")
V2 = os.path.join(FIXTURES, "v2.ts")
SR, HOP, C = 44100, 2048, 4


@pytest.fixture(scope="module")
def model():
    return torch.jit.load(V2)


def tone(n, f=220.0, sr=SR, seed=0):
    t = np.arange(n) / sr
    noise = np.random.default_rng(seed).standard_normal(n) * 0.05
    return (0.3 * np.sin(2 * np.pi * f * t) + noise).astype(np.float32)


def ref_encode(model, audio, seed):
    """What the user would do by hand: pad to whole frames, seed, model.encode on (1, 1, S)."""
    x = np.pad(np.asarray(audio, np.float32), (0, (-len(audio)) % HOP))
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.encode(torch.from_numpy(x).reshape(1, 1, -1))[0].numpy()


def write(folder, name, audio, sr=SR):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, sr, subtype="FLOAT" if name.endswith(".wav") else None)
    return path


# ---------------------------------------------------------------------------------------------
# lvns encode


def test_encode_folder_end_to_end(tmp_path, model):
    lens = {"a.wav": 3 * HOP, "b/c.flac": 5 * HOP + 100, "d.ogg": HOP // 2}
    clips = {n: tone(s, 110 * (i + 1), seed=i) for i, (n, s) in enumerate(lens.items())}
    for n, x in clips.items():
        write(tmp_path / "in", n, x)
    (tmp_path / "in" / "notes.txt").write_text("not audio, not listed")
    res = encode.encode_folder(str(tmp_path / "in"), V2, seed=7, progress=False)

    assert res.names == ("a.wav", "b/c.flac", "d.ogg")  # recursive, sorted, .txt ignored
    assert res.skipped == () and res.mixed == () and res.resampled == ()
    assert list(res.lengths) == [3, 6, 1]  # ceil(S / hop)
    assert res.latents.shape == (3, C, 6) and res.latents.dtype == np.float32
    assert res.rave_sha256 == hashlib.sha256(open(V2, "rb").read()).hexdigest()
    for i, n in enumerate(res.names):
        # file i of the sorted listing is encoded with torch seed 7 + i; ogg is lossy, so read it back
        audio = sf.read(str(tmp_path / "in" / n), dtype="float32")[0]
        z = ref_encode(model, audio, 7 + i)
        np.testing.assert_allclose(res.latents[i, :, : res.lengths[i]], z, rtol=1e-5, atol=1e-5)
        assert not res.latents[i, :, res.lengths[i]:].any()  # zero padding after the clip
    # RAVE's encoder samples: a different seed gives different latents, the same seed the same
    again = encode.encode_folder(str(tmp_path / "in"), V2, seed=7, progress=False)
    other = encode.encode_folder(str(tmp_path / "in"), V2, seed=8, progress=False)
    np.testing.assert_array_equal(again.latents, res.latents)
    assert not np.allclose(other.latents, res.latents)


def test_unreadable_files_are_listed_and_skipped(tmp_path, caplog):
    d = tmp_path / "in"
    write(d, "good.wav", tone(2 * HOP))
    (d / "broken.wav").write_bytes(b"RIFF this is not a wav file")
    write(d, "empty.wav", np.zeros((0,), np.float32))
    with caplog.at_level(logging.WARNING, logger="lvns_jax"):
        res = encode.encode_folder(str(d), V2, progress=False)
    assert res.names == ("good.wav",)
    skipped = dict(res.skipped)
    assert set(skipped) == {"broken.wav", "empty.wav"}
    assert "unreadable" in skipped["broken.wav"] and "no samples" in skipped["empty.wav"]
    assert "skipped broken.wav" in caplog.text and "skipped empty.wav" in caplog.text
    out = tmp_path / "lat.npz"
    encode.save_npz(str(out), res)
    with np.load(out) as f:  # the skipped files are recorded in the output too
        assert sorted(s.split("\t")[0] for s in f["skipped"]) == ["broken.wav", "empty.wav"]

    # nothing readable at all: an error that lists what was skipped
    os.remove(d / "good.wav")
    with pytest.raises(LvnsError, match=r"none of the 2 audio file.*broken\.wav.*empty\.wav"):
        encode.encode_folder(str(d), V2, progress=False)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("x")
    with pytest.raises(LvnsError, match="no audio files"):
        encode.encode_folder(str(tmp_path / "nothing"), V2, progress=False)


def test_stereo_and_multichannel_are_mixed_to_mono(tmp_path, caplog, model):
    left, right = tone(3 * HOP, 220, seed=1), tone(3 * HOP, 330, seed=2)
    quad = np.stack([left, right, left, -right], axis=1)  # 4 channels, mean = left / 2
    write(tmp_path / "in", "0_mono.wav", left)
    write(tmp_path / "in", "1_stereo.wav", np.stack([left, right], axis=1))
    write(tmp_path / "in", "2_quad.wav", quad)
    with caplog.at_level(logging.WARNING, logger="lvns_jax"):
        res = encode.encode_folder(str(tmp_path / "in"), V2, seed=3, progress=False)
    assert res.mixed == ("1_stereo.wav", "2_quad.wav")
    assert "2 file(s) had several channels and were mixed to mono: 1_stereo.wav, 2_quad.wav" in caplog.text
    np.testing.assert_allclose(res.latents[1], ref_encode(model, (left + right) / 2, 3 + 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.latents[2], ref_encode(model, left / 2, 3 + 2), rtol=1e-5, atol=1e-5)


def test_sample_rate_mismatch_is_resampled(tmp_path, caplog, model):
    from lvns_jax.models.vggish.frontend import resample

    x22 = tone(22050, 440, sr=22050)  # 1 s at 22.05 kHz -> 44100 samples -> 22 frames
    x48 = tone(48000 // 2, 440, sr=48000, seed=4)  # 0.5 s at 48 kHz -> 22050 samples -> 11 frames
    write(tmp_path / "in", "a22.wav", x22, sr=22050)
    write(tmp_path / "in", "b48.wav", x48, sr=48000)
    with caplog.at_level(logging.WARNING, logger="lvns_jax"):
        res = encode.encode_folder(str(tmp_path / "in"), V2, progress=False)
    assert res.resampled == (("a22.wav", 22050), ("b48.wav", 48000))
    assert "2 file(s) at 22050/48000 Hz were resampled to the model's 44100 Hz" in caplog.text
    assert list(res.lengths) == [22, 11]
    for i, (x, sr) in enumerate([(x22, 22050), (x48, 48000)]):
        y = np.asarray(resample(x, sr, SR))
        assert abs(len(y) - len(x) * SR / sr) < 1
        np.testing.assert_allclose(res.latents[i, :, : res.lengths[i]], ref_encode(model, y, i), rtol=1e-5, atol=1e-5)
    # the resampler keeps a 440 Hz tone at 440 Hz
    y = np.asarray(resample(x22, 22050, SR))
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * SR / len(y) - 440) < 2


def test_frames_and_offset_at_encode_time(tmp_path):
    write(tmp_path / "in", "long.wav", tone(12 * HOP))
    write(tmp_path / "in", "short.wav", tone(3 * HOP))
    full = encode.encode_folder(str(tmp_path / "in"), V2, progress=False)
    fit = encode.encode_folder(str(tmp_path / "in"), V2, frames=8, offset=2, progress=False)
    assert fit.latents.shape == (2, C, 8) and list(fit.lengths) == [8, 8]
    np.testing.assert_array_equal(fit.latents, container.fit_frames(full.latents, 8, 2))
    with pytest.raises(LvnsError, match="must be >= 0"):
        encode.encode_folder(str(tmp_path / "in"), V2, offset=-1, progress=False)


def test_missing_torch_and_bad_model_are_clear_errors(tmp_path, monkeypatch):
    write(tmp_path / "in", "a.wav", tone(HOP))
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(LvnsError, match="not a readable TorchScript export"):
        encode.encode_folder(str(tmp_path / "in"), str(bad), progress=False)
    with pytest.raises(LvnsError, match="RAVE export not found"):
        encode.encode_folder(str(tmp_path / "in"), str(tmp_path / "nope.ts"), progress=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(LvnsError, match=r"pip install 'lvns-jax\[convert\]'"):
        encode.encode_folder(str(tmp_path / "in"), V2, progress=False)


def test_model_info_reads_v2_and_rave1_exports(model):
    from types import SimpleNamespace as NS

    assert encode.model_info(model) == encode.ModelInfo(SR, HOP, C, 1)  # acids-rave 2.x: sr, encode_params
    rave1 = NS(sampling_rate=torch.tensor(48000), encode_params=torch.tensor([1, 1, 8, 2048]))
    assert encode.model_info(rave1) == encode.ModelInfo(48000, 2048, 8, 1)  # RAVE 1.x export_rave.py
    assert encode.model_info(NS(), sample_rate=16000) == encode.ModelInfo(16000, None, None, 1)
    with pytest.raises(LvnsError, match="--sample-rate"):
        encode.model_info(NS())
    with pytest.raises(LvnsError, match="takes 2 audio channels"):
        encode.model_info(NS(sr=44100, encode_params=torch.tensor([2, 1, 8, 2048])))


# ---------------------------------------------------------------------------------------------
# dataset init: .npz and the original's .h5


def original_container(items, idx, size, frames, offset):
    """The original's loop (eprior/eprior/core.py, EPrior._init_container, "dataset"), in NumPy."""
    out = np.zeros((size, items[0].shape[1], frames), np.float32)
    for i, k in enumerate(idx):
        loaded = items[k][0][:, offset:]
        if loaded.shape[1] < frames:
            out[i, :, : loaded.shape[1]] = loaded
        else:
            out[i] = loaded[:, :frames]
    return out


def _items(m=7, c=C, seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal((1, c, int(t))).astype(np.float32) for t in r.integers(3, 30, m)]


def _write_h5(path, items):
    import h5py

    with h5py.File(path, "w") as f:
        for i, x in enumerate(items):
            f.create_dataset(str(i), data=x)


@pytest.mark.parametrize("frames,offset", [(8, 0), (16, 5), (40, 2), (4, 28)])
def test_h5_original_layout_equals_npz_and_original_loop(tmp_path, frames, offset):
    pytest.importorskip("h5py")
    items = _items()
    h5 = tmp_path / "orig.h5"
    _write_h5(h5, items)
    padded, lengths = encode.stack_padded([x[0] for x in items])
    npz = tmp_path / "same.npz"
    np.savez(npz, latents=padded, lengths=lengths)
    key = jax.random.key(3)
    a = np.asarray(container.init_container(key, "dataset", 5, C, frames, str(h5), offset))
    b = np.asarray(container.init_container(key, "dataset", 5, C, frames, str(npz), offset))
    np.testing.assert_array_equal(a, b)
    idx = np.asarray(jax.random.permutation(key, len(items))[:5])
    assert len(set(idx.tolist())) == 5  # without replacement
    np.testing.assert_array_equal(a, original_container(items, idx, 5, frames, offset))
    assert a.shape == (5, C, frames)


def test_encode_writes_the_original_h5_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    write(tmp_path / "in", "a.wav", tone(3 * HOP))
    write(tmp_path / "in", "b.wav", tone(7 * HOP))
    write(tmp_path / "in", "c.wav", tone(5 * HOP))
    res = encode.encode_folder(str(tmp_path / "in"), V2, progress=False)
    encode.save_npz(str(tmp_path / "l.h5"), res)
    encode.save_npz(str(tmp_path / "l.npz"), res)
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert sorted(f.keys()) == ["0", "1", "2"]
        assert [f[str(i)].shape for i in range(3)] == [(1, C, 3), (1, C, 7), (1, C, 5)]
        assert f.attrs["rave_sha256"] == res.rave_sha256
    key = jax.random.key(0)
    a = container.init_container(key, "dataset", 3, C, 6, str(tmp_path / "l.h5"), 1)
    b = container.init_container(key, "dataset", 3, C, 6, str(tmp_path / "l.npz"), 1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_too_small_dataset_names_the_sizes(tmp_path):
    items = _items(m=3)
    np.savez(tmp_path / "l.npz", latents=encode.stack_padded([x[0] for x in items])[0])
    with pytest.raises(ConfigError, match=r"holds 3 latents, fewer than container_size = 5"):
        container.init_container(jax.random.key(0), "dataset", 5, C, 8, str(tmp_path / "l.npz"))
    pytest.importorskip("h5py")
    _write_h5(tmp_path / "l.h5", items)
    with pytest.raises(ConfigError, match=r"holds 3 latents, fewer than container_size = 4"):
        container.init_container(jax.random.key(0), "dataset", 4, C, 8, str(tmp_path / "l.h5"))
    # exactly M = N is allowed: every item once
    z = container.init_container(jax.random.key(0), "dataset", 3, C, 8, str(tmp_path / "l.h5"))
    firsts = sorted(float(x[0, 0, 0]) for x in items)
    assert sorted(np.asarray(z)[:, 0, 0].tolist()) == pytest.approx(firsts)


def test_channel_mismatch_and_bad_h5_layout(tmp_path):
    np.savez(tmp_path / "l.npz", latents=np.zeros((6, 8, 10), np.float32))
    with pytest.raises(ConfigError, match="has 8 latent channels.*latent_channels = 4"):
        container.init_container(jax.random.key(0), "dataset", 4, 4, 8, str(tmp_path / "l.npz"))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "names.h5", "w") as f:
        f.create_dataset("clip_a", data=np.zeros((1, 4, 5)))
        f.create_dataset("clip_b", data=np.zeros((1, 4, 5)))
    with pytest.raises(ConfigError, match="datasets named 0 ... 1.*clip_a"):
        container.init_container(jax.random.key(0), "dataset", 2, 4, 8, str(tmp_path / "names.h5"))
    items = _items(m=4)
    items[2] = np.zeros((1, 8, 9), np.float32)  # one item of the wrong width
    _write_h5(tmp_path / "mixed.h5", items)
    with pytest.raises(ConfigError, match=r"item 2 has shape \(8, 9\)"):
        container.init_container(jax.random.key(0), "dataset", 4, C, 8, str(tmp_path / "mixed.h5"))


def test_missing_h5py_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "l.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(LvnsError, match=r"pip install 'lvns-jax\[h5\]'"):
        container.init_container(jax.random.key(0), "dataset", 2, C, 8, str(tmp_path / "l.h5"))


def test_dataset_model_warning(tmp_path):
    write(tmp_path / "in", "a.wav", tone(2 * HOP))
    res = encode.encode_folder(str(tmp_path / "in"), V2, progress=False)
    encode.save_npz(str(tmp_path / "l.npz"), res)
    same, other = tmp_path / "same", tmp_path / "other"
    for d, sha in ((same, res.rave_sha256), (other, "0" * 64)):
        d.mkdir()
        (d / "meta.json").write_text(json.dumps({"sha256": sha}))
    assert container.dataset_model_warning(str(tmp_path / "l.npz"), str(same)) is None
    msg = container.dataset_model_warning(str(tmp_path / "l.npz"), str(other))
    assert "encoded by v2.ts" in msg and "another file" in msg
    assert "is not that model" in container.dataset_model_warning(str(tmp_path / "l.npz"), "toy")
    np.save(tmp_path / "plain.npy", np.zeros((2, C, 3), np.float32))  # no record: nothing to say
    assert container.dataset_model_warning(str(tmp_path / "plain.npy"), "toy") is None


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_encode_round_trip(tmp_path, capsys):
    for i in range(4):
        write(tmp_path / "in", f"clip{i}.wav", tone((4 + i) * HOP, 200 + 50 * i, seed=i))
    out = tmp_path / "lat.npz"
    rc = cli.main(["encode", str(tmp_path / "in"), "--rave", V2, "--out", str(out), "--frames", "8",
                   "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: 4 latents of 4 channels" in text
    assert f"lvns run init=dataset dataset_path={out} latent_channels=4" in text
    with np.load(out) as f:
        assert f["latents"].shape == (4, C, 8)
        assert list(f["names"]) == [f"clip{i}.wav" for i in range(4)]
        assert str(f["rave_sha256"]) == hashlib.sha256(open(V2, "rb").read()).hexdigest()
        assert int(f["sample_rate"]) == SR and int(f["hop"]) == HOP and int(f["frames"]) == 8
    z = container.init_container(jax.random.key(1), "dataset", 4, C, 8, str(out))
    assert sorted(np.asarray(z).sum(axis=(1, 2)).tolist()) == pytest.approx(
        sorted(np.load(out)["latents"].sum(axis=(1, 2)).tolist()), rel=1e-5)

    # errors are one line, rc 2
    (tmp_path / "empty").mkdir()
    rc = cli.main(["encode", str(tmp_path / "empty"), "--rave", V2, "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("lvns: error: no audio files") and err.count("\n") == 1
    rc = cli.main(["encode", str(tmp_path / "in"), "--rave", V2, "--out", str(tmp_path / "x.txt"), "--no-progress"])
    assert rc == 2 and "should end in .npz" in capsys.readouterr().err


def test_cli_dataset_run_from_encoded_folder(tmp_path, capsys):
    """The two user commands: encode a folder, then a dataset-initialised run (toy models for speed)."""
    for i in range(5):
        write(tmp_path / "in", f"c{i}.wav", tone(6 * HOP, 150 + 40 * i, seed=i))
    lat = tmp_path / "lat.npz"
    assert cli.main(["encode", str(tmp_path / "in"), "--rave", V2, "--out", str(lat), "--no-progress"]) == 0
    from lvns_jax import config as config_lib
    from lvns_jax.assemble import assemble

    items = ["init=dataset", f"dataset_path={lat}", "latent_channels=4", "rave=toy", "vggish=toy",
             "container_size=4", "breed_size=2", "k=2", "generations=1", "latent_frames=4", "dataset_offset=1",
             "scan_length=1", "save_every=0", "audio_every=0", "progress=false"]
    state = assemble(config_lib.load(None, items)).init()
    data = container.fit_frames(np.load(lat)["latents"], 4, 1)
    rows = [int(np.argmin(np.abs(data - z).sum(axis=(1, 2)))) for z in np.asarray(state.latents)]
    assert len(set(rows)) == 4  # four distinct clips, without replacement
    np.testing.assert_array_equal(np.asarray(state.latents), data[rows])
    run = tmp_path / "run"
    rc = cli.main(["run", *items, "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == [0, 1]
    # generation 0 is the dataset container: its sparseness is the one search.init computed
    assert lines[0]["sparseness_mean"] == pytest.approx(float(np.mean(np.asarray(state.sparseness))), rel=1e-5)


@pytest.mark.slow
def test_dataset_run_decodes_with_the_converted_encoder(tmp_path, caplog):
    """Encode with v2.ts, convert the same v2.ts, init a search: no model-mismatch warning, and the
    container's decoded audio is the converted decoder's audio of the encoded latents."""
    from lvns_jax import config as config_lib
    from lvns_jax.assemble import assemble
    from lvns_jax.models import rave

    for i in range(6):
        write(tmp_path / "in", f"c{i}.wav", tone(10 * HOP, 120 + 30 * i, seed=i), sr=22050)
    lat, w = tmp_path / "lat.npz", tmp_path / "w"
    assert cli.main(["encode", str(tmp_path / "in"), "--rave", V2, "--out", str(lat), "--no-progress"]) == 0
    assert cli.main(["convert", "rave", V2, "--out", str(w)]) == 0
    with caplog.at_level(logging.WARNING, logger="lvns_jax"):
        cfg = config_lib.load(None, ["init=dataset", f"dataset_path={lat}", "latent_channels=4", f"rave={w}",
                                     "vggish=toy", "container_size=6", "breed_size=2", "k=2", "latent_frames=8",
                                     "noise=false"])
        state = assemble(cfg).init()
    assert "was encoded by" not in caplog.text
    assert container.dataset_model_warning(str(lat), str(w)) is None
    data = container.fit_frames(np.load(lat)["latents"], 8, 0)
    got = np.asarray(state.latents)
    assert sorted(got.sum(axis=(1, 2)).tolist()) == pytest.approx(sorted(data.sum(axis=(1, 2)).tolist()), rel=1e-5)
    audio = np.asarray(rave.load(str(w)).decode(state.latents, noise=False))
    assert audio.shape == (6, 8 * HOP) and np.all(np.isfinite(audio))
