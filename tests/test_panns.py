"""PANNs CNN14 in JAX against the torch reference (panns' ``Cnn14`` + torchlibrosa, random init).

The reference model (``tests/fixtures/panns_torch.py``) is full size, in eval mode, with
non-trivial BatchNorms; it is built once per module. Parity: log-mel and embedding relative L2
<= 1e-4 at 32 kHz; cosine >= 0.999 at 44.1 kHz, where we resample in JAX (resampy kaiser_best)
and the reference with ``scipy.signal.resample_poly(x, 320, 441)`` (a Kaiser-windowed polyphase
FIR: a different filter, so the agreement is not bit-level). Converter round trip through
``lvns convert panns`` on a ``torch.save({'model': state_dict})`` file, one-line errors, and the
shape / dtype / jit / vmap / grad invariants.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchlibrosa")  # imports librosa (mel filters, window): test extra only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lvns_jax.cli import main as lvns_main  # noqa: E402
from lvns_jax.errors import LvnsError, WeightsError  # noqa: E402
from lvns_jax.models import panns  # noqa: E402
from lvns_jax.models.panns import convert as cv  # noqa: E402
from lvns_jax.models.panns import frontend  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
if FIXTURES not in sys.path:
    sys.path.insert(0, FIXTURES)
import panns_torch as pt  # noqa: E402


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def ref():
    return pt.reference_model(0)


@pytest.fixture(scope="module")
def params(ref):
    return cv.read_state_dict(ref.state_dict())


@pytest.fixture(scope="module")
def embed32():
    """The jitted embed that ``PannsModel.embed`` uses: one compile for every (2, 32000) 32 kHz call."""
    from lvns_jax.models.panns.model import _embed_jit

    return lambda p, x: _embed_jit(p, x, 32000)


@pytest.fixture(scope="module")
def clips32():
    return pt.test_audio(2, 1.0, 32000, seed=0)


# ---------------------------------------------------------------------------------------------
# front end


def test_mel_matrix_matches_librosa():
    librosa = pytest.importorskip("librosa")
    want = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T
    got = frontend.mel_matrix()
    assert got.shape == (513, 64)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_logmel_parity_32k(ref, clips32):
    x = np.concatenate([clips32, 0.5 * clips32[:1, ::-1]], axis=0)[:, :31999]  # odd length too
    want = pt.logmel(ref, x)
    got = np.asarray(jax.jit(frontend.log_mel_32k)(x))
    assert got.shape == want.shape == (3, 1 + 31999 // 320, 64) and got.dtype == np.float32
    err = rel_l2(got, want)
    print(f"log-mel rel L2 {err:.2e}")
    assert err <= 1e-4


def test_silence_logmel_is_amin():
    got = np.asarray(frontend.log_mel_32k(np.zeros((1, 9920), np.float32)))
    np.testing.assert_allclose(got, -100.0)


# ---------------------------------------------------------------------------------------------
# network / embedding parity


def test_embedding_parity_32k(ref, params, embed32, clips32):
    want = pt.embedding(ref, clips32)
    got = np.asarray(embed32(params, clips32))
    assert got.shape == (2, 2048) and got.dtype == np.float32
    assert np.std(want[0] - want[1]) > 1e-3 * np.std(want)  # the rows differ: not a constant net
    err = rel_l2(got, want)
    print(f"embedding rel L2 {err:.2e}")
    assert err <= 1e-4


def test_embedding_parity_44k(ref, params):
    scipy_signal = pytest.importorskip("scipy.signal")
    x = pt.test_audio(2, 1.0, 44100, seed=3)
    x32 = scipy_signal.resample_poly(x.astype(np.float64), 320, 441, axis=-1).astype(np.float32)
    assert x32.shape[-1] == frontend.resampled_length(x.shape[-1], 44100, 32000)
    want = pt.embedding(ref, x32)
    got = np.asarray(jax.jit(lambda p, a: panns.embed(p, a, 44100))(params, x))
    cos = cosine(got, want)
    print(f"44.1 kHz cosine {cos}, rel L2 {rel_l2(got, want):.2e}")
    assert np.all(cos >= 0.999)


# ---------------------------------------------------------------------------------------------
# invariants


def test_shapes_jit_vmap_grad(params, embed32, clips32):
    batched = np.asarray(embed32(params, clips32))
    assert batched.shape == (2, 2048) and batched.dtype == np.float32
    n = panns.min_samples(32000)  # short clips keep the extra compiles cheap
    x = clips32[:, :n]
    f = jax.jit(lambda p, a: panns.embed(p, a, 32000))  # params as arguments, not constants
    short = np.asarray(f(params, x))
    tol = dict(rtol=2e-5, atol=1e-5 * np.abs(short).max())
    np.testing.assert_allclose(np.asarray(f(params, x[0])), short[0], **tol)  # (S,) -> (2048,)
    vm = jax.jit(jax.vmap(lambda p, a: panns.embed(p, a, 32000), in_axes=(None, 0)))(params, x[:, None])
    np.testing.assert_allclose(np.asarray(vm)[:, 0], short, **tol)
    g = jax.jit(jax.grad(lambda p, a: panns.embed(p, a, 32000).sum(), argnums=1))(params, jnp.asarray(x[:1]))
    assert g.shape == (1, n) and g.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_short_clips_are_nan(params):
    for sr in (32000, 44100, 16000):
        n = panns.min_samples(sr)
        assert frontend.num_frames(frontend.resampled_length(n, sr, 32000)) == frontend.MIN_FRAMES
        assert frontend.num_frames(frontend.resampled_length(n - 1, sr, 32000)) == frontend.MIN_FRAMES - 1
        short = panns.embed(params, np.zeros((2, n - 1), np.float32), sr)
        assert short.shape == (2, 2048) and bool(jnp.all(jnp.isnan(short)))
    ok = panns.embed(params, 0.1 * np.ones((1, panns.min_samples(44100)), np.float32), 44100)
    assert bool(jnp.all(jnp.isfinite(ok)))


def test_untrained_model():
    m = panns.untrained(0)
    assert isinstance(m, panns.PannsModel) and m.trained is False
    assert m.description.startswith("UNTRAINED PANNs CNN14 (random init")
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(m.params))
    assert n == 79_690_048  # Cnn14 without fc_audioset and the front-end buffers
    x = pt.test_audio(2, 1.0, 32000, seed=5)
    e = np.asarray(m.embed(x, 32000))  # same shapes as the parity tests: no new compile
    assert e.shape == (2, panns.EMBEDDING_SIZE) and e.dtype == np.float32 and np.all(np.isfinite(e))
    assert np.abs(e[0] - e[1]).max() > 0
    again = panns.untrained(0).params["conv_block6"]["conv2"]["kernel"]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(m.params["conv_block6"]["conv2"]["kernel"]))
    with pytest.raises(ValueError):
        panns.untrained(-1)


# ---------------------------------------------------------------------------------------------
# converter


def test_convert_round_trip(ref, params, embed32, clips32, tmp_path, capsys):
    """A checkpoint as audioset_tagging_cnn saves it -> `lvns convert panns` -> load -> embeddings."""
    pth = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"iteration": 660000, "model": ref.state_dict()}, pth)
    out = tmp_path / "panns"
    assert lvns_main(["convert", "panns", str(pth), "--out", str(out)]) == 0
    assert "panns_cnn14" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["architecture"] == "panns_cnn14" and meta["kind"] == "panns"
    assert meta["sample_rate"] == 32000 and meta["embedding_size"] == 2048 and meta["trained"] is True
    assert len(meta["sha256"]) == 64 and meta["source"].endswith("Cnn14_mAP=0.431.pth")
    model = panns.load(out)
    assert model.trained and "PANNs CNN14" in model.description and "UNTRAINED" not in model.description
    got = np.asarray(embed32(model.params, clips32))
    np.testing.assert_array_equal(got, np.asarray(embed32(params, clips32)))
    assert rel_l2(got, pt.embedding(ref, clips32)) <= 1e-4
    e2 = np.asarray(model.embed(clips32, 32000))
    np.testing.assert_allclose(e2, got, rtol=1e-5, atol=1e-5 * np.abs(got).max())


def test_bare_dataparallel_state_dict(ref, params):
    """A bare state dict with DataParallel's ``module.`` prefixes gives the same params."""
    got = cv.read_state_dict({"module." + k: v for k, v in ref.state_dict().items()})
    assert set(got) == {"bn0", "fc1"} | {f"conv_block{i}" for i in range(1, 7)}  # fc_audioset, front end dropped
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# one-line errors


def _cli_error(args, capsys, pattern):
    import re

    rc = lvns_main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("lvns: error: ") and "\n" not in err, err
    assert re.search(pattern, err), err
    return err


def _tiny_sd(**override):
    """Every Cnn14 key with a 1-element tensor (shape errors come after the key checks)."""
    sd = {k: torch.zeros(1) for k in cv.torch_shapes()}
    sd.update(override)
    return sd


def test_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    _cli_error(["convert", "panns", str(tmp_path / "nope.pth"), "--out", out], capsys, "PANNs checkpoint not found")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02not really a pickle" * 10)
    _cli_error(["convert", "panns", str(bad), "--out", out], capsys, "cannot read .* as a PANNs checkpoint")
    torch.save({"model": _tiny_sd()}, tmp_path / "ok.pth")
    trunc = tmp_path / "truncated.pth"
    trunc.write_bytes((tmp_path / "ok.pth").read_bytes()[:300])
    _cli_error(["convert", "panns", str(trunc), "--out", out], capsys, "cannot read")
    wrong = tmp_path / "vggish.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, wrong)
    _cli_error(["convert", "panns", str(wrong), "--out", out], capsys, "not a PANNs Cnn14 state dict: missing")
    _cli_error(["convert", "panns", str(tmp_path / "ok.pth"), "--out", out, "--pca", "x"], capsys, "--pca only")
    assert not os.path.exists(out)


@pytest.mark.parametrize("case, pattern", [
    ("list", "holds a list"),
    ("shape", "'bn0.weight' has shape \\(1,\\), expected \\(64,\\)"),
    ("extra", "unexpected tensors for Cnn14 \\(att_block"),
    ("mel16k", "melW has shape \\(257, 64\\).*only the 32 kHz Cnn14"),
    ("melbad", "melW is not the 32 kHz"),
    ("nan", "contains NaN"),
    ("int", "expected floating point"),
    ("module", "pickled torch module"),
])
def test_wrong_layouts(tmp_path, case, pattern):
    if case == "list":
        obj = [torch.zeros(1)]
    elif case == "shape":
        obj = {"model": _tiny_sd()}
    elif case == "extra":
        obj = {"model": _tiny_sd(**{"att_block.att.weight": torch.zeros(1)})}
    elif case == "mel16k":
        obj = {"model": _tiny_sd(**{"logmel_extractor.melW": torch.zeros(257, 64)})}
    elif case == "melbad":
        obj = {"model": _tiny_sd(**{"logmel_extractor.melW": torch.ones(513, 64)})}
    elif case == "nan":
        obj = {"model": _tiny_sd(**{"bn0.weight": torch.full((64,), float("nan"))})}
    elif case == "int":
        obj = {"model": _tiny_sd(**{"bn0.weight": torch.zeros(64, dtype=torch.int64)})}
    else:
        obj = torch.nn.Linear(2, 2)
    path = tmp_path / f"{case}.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=pattern) as e:
        cv.read_state_dict(path)
    assert "\n" not in str(e.value)


def test_load_errors(tmp_path, params):
    from lvns_jax.weights_io import save_params

    with pytest.raises(WeightsError, match="weights directory not found"):
        panns.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a converted lvns-jax model"):
        panns.load(tmp_path / "empty")
    small = {"bn0": params["bn0"]}
    save_params(tmp_path / "vgg", {"params": small}, {"kind": "vggish"})
    with pytest.raises(WeightsError, match="holds a 'vggish' model, expected 'panns'"):
        panns.load(tmp_path / "vgg")
    save_params(tmp_path / "arch", {"params": small}, {"kind": "panns", "architecture": "panns_cnn10"})
    with pytest.raises(WeightsError, match="architecture 'panns_cnn10'"):
        panns.load(tmp_path / "arch")
    save_params(tmp_path / "partial", {"params": small}, {"kind": "panns", "architecture": "panns_cnn14"})
    with pytest.raises(WeightsError, match="CNN14 params lack conv_block1") as e:
        panns.load(tmp_path / "partial")
    assert "\n" not in str(e.value)
    (tmp_path / "partial" / "meta.json").write_text("{not json")
    with pytest.raises(LvnsError, match="corrupt"):
        panns.load(tmp_path / "partial")


def test_bench_knn_dim_smoke(tmp_path, capsys):
    """experiments/panns/bench_knn_dim.py runs (kNN half only, tiny sizes) and writes its JSON."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "panns", "bench_knn_dim.py")
    spec = importlib.util.spec_from_file_location("bench_knn_dim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    assert mod.main(["--container", "40", "--breed", "10", "--k", "5", "--knn-repeats", "1", "--skip-embed",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pool"] == 50 and res["knn_ratio_2048_over_128"] > 0
    assert "2048-d" in capsys.readouterr().out
