"""Which VGGish files `lvns convert vggish` accepts, and the one-line errors for the others.

Accepted (table in ``weights/README.md``): torchvggish state dicts (legacy pickle and zip-format
``.pth``), torchvggish's PCA ``.pth`` (pickled float64 NumPy arrays), TensorFlow's
``vggish_pca_params.npz`` (``np.savez`` of the same arrays) and a hub ``VGGish`` state dict
whose ``pproc.*`` entries carry the PCA (means as (128, 1)). Refused with one line: a whole
pickled model (``torch.save(model)``), PCA files of the wrong layout, damaged archives.

Every file is written here (synthetic weights from ``tests/fixtures/vggish_synth.py``); the
full-size weights are saved once per module and converted three times (a few seconds each).
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lvns_jax.models import vggish  # noqa: E402
from lvns_jax.cli import main as lvns_main  # noqa: E402
from lvns_jax.errors import WeightsError  # noqa: E402
from lvns_jax.models.vggish import convert as cv  # noqa: E402
from vggish_common import audio, save_torch_state_dict, vggish_synth  # noqa: E402


def run_cli(args, capsys):
    rc = lvns_main(args)
    captured = capsys.readouterr()
    return rc, captured.err.strip()


def assert_one_line_error(args, capsys, pattern, out=None):
    """`lvns ...` exits 2 with exactly one stderr line matching ``pattern``; writes nothing."""
    import re

    rc, err = run_cli(args, capsys)
    assert rc == 2, err
    assert err.startswith("lvns: error: ") and "\n" not in err, err
    assert re.search(pattern, err), err
    if out is not None:
        assert not os.path.exists(out)
    return err


def two_clips_16k():
    """(2, 15600): one complete example each (speech-like and noise clips of the reference fixture)."""
    return np.stack([audio("one_example_16k")[0], audio("pink_16k")[0][:15600]])


def hub_state_dict(sd: dict, pca: dict) -> dict:
    """What ``torch.hub.load('harritaylor/torchvggish', 'vggish').state_dict()`` holds: the VGG
    tensors plus ``pproc.*``; the hub loader applies ``torch.as_tensor`` and ``.reshape(-1, 1)``
    to the float64 release arrays and copies them into float32 parameters."""
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    vec = torch.empty(128, 128)
    vec.copy_(torch.as_tensor(pca["pca_eigen_vectors"]))
    means = torch.empty(128, 1)
    means.copy_(torch.as_tensor(pca["pca_means"].reshape(-1, 1)))
    out["pproc.pca_eigen_vectors"] = vec
    out["pproc.pca_means"] = means
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vggish_files")
    sd = vggish_synth.state_dict()
    pca = vggish_synth.pca_params()
    assert pca["pca_eigen_vectors"].dtype == np.float64 and pca["pca_means"].shape == (128,)
    f = {"tmp": tmp, "sd": sd, "pca": pca}
    f["weights"] = str(tmp / "vggish-synthetic.pth")
    save_torch_state_dict(f["weights"], sd)
    # torchvggish's release PCA file: a dict of float64 NumPy arrays, legacy torch pickle
    f["pca_pth"] = str(tmp / "vggish_pca_params-synthetic.pth")
    torch.save(pca, f["pca_pth"], _use_new_zipfile_serialization=False)
    f["pca_pth_zip"] = str(tmp / "vggish_pca_params-zip.pth")
    torch.save(pca, f["pca_pth_zip"])
    # TensorFlow's release PCA file (models/research/audioset/vggish)
    f["pca_npz"] = str(tmp / "vggish_pca_params.npz")
    np.savez(f["pca_npz"], pca_eigen_vectors=pca["pca_eigen_vectors"], pca_means=pca["pca_means"])
    f["hub"] = str(tmp / "vggish-hub-state-dict.pth")
    torch.save(hub_state_dict(sd, pca), f["hub"])
    return f


@pytest.fixture(scope="module")
def converted(files):
    """The same weights converted with the torchvggish PCA .pth and with the TF .npz."""
    out = {}
    for name in ("pca_pth", "pca_npz"):
        d = str(files["tmp"] / f"w_{name}")
        assert lvns_main(["convert", "vggish", files["weights"], "--pca", files[name], "--out", d]) == 0
        out[name] = vggish.load(d)
    return out


# ----------------------------------------------------------------------------- accepted files


def test_pth_and_npz_pca_convert_identically(files, converted):
    a, b = converted["pca_pth"], converted["pca_npz"]
    want = {"eigen_vectors": files["pca"]["pca_eigen_vectors"].astype(np.float32),
            "means": files["pca"]["pca_means"].astype(np.float32)}
    for m in (a, b):
        assert m.pca is not None and m.meta["pca"] is True
        for k in ("eigen_vectors", "means"):
            got = np.asarray(m.pca[k])
            assert got.dtype == np.float32 and got.shape == want[k].shape
            assert got.tobytes() == want[k].tobytes(), k  # bit-identical
    assert b.meta["pca_source"].endswith("vggish_pca_params.npz")
    assert b.meta["pca_sha256"] == cv.sha256_of(files["pca_npz"])
    for layer in a.params:
        for k in ("kernel", "bias"):
            assert np.array_equal(np.asarray(a.params[layer][k]), np.asarray(b.params[layer][k]))
    x = two_clips_16k()
    ea = np.asarray(a.embed(x, 16000, postprocess=True))
    eb = np.asarray(b.embed(x, 16000, postprocess=True))
    assert ea.shape == (2, 128)
    assert len(np.unique(ea)) > 20  # spread over the 8-bit quantiser, a real comparison
    np.testing.assert_array_equal(ea, eb)


def test_read_pca_all_layouts_agree(files):
    """Legacy and zip .pth, .npz, hub state dict (float32, means (128, 1)), and a PCA .pth
    holding tensors with the means reshaped as torchvggish does: the same float32 numbers."""
    p = str(files["tmp"] / "pca_tensors.pth")
    torch.save({"pca_eigen_vectors": torch.as_tensor(files["pca"]["pca_eigen_vectors"]),
                "pca_means": torch.as_tensor(files["pca"]["pca_means"]).reshape(-1, 1)}, p)
    ref = cv.read_pca(files["pca_pth"])
    assert ref["eigen_vectors"].shape == (128, 128) and ref["means"].shape == (128,)
    for name in ("pca_pth_zip", "pca_npz", "hub"):
        got = cv.read_pca(files[name])
        for k in ("eigen_vectors", "means"):
            assert got[k].dtype == np.float32 and got[k].tobytes() == ref[k].tobytes(), (name, k)
    got = cv.read_pca(p)
    assert all(got[k].tobytes() == ref[k].tobytes() for k in ref)


def test_hub_state_dict_as_weights(files, converted, capsys):
    """`lvns convert vggish HUB_STATE_DICT.pth` (no --pca): the pproc.* entries become the PCA."""
    out = str(files["tmp"] / "w_hub")
    rc, err = run_cli(["convert", "vggish", files["hub"], "--out", out], capsys)
    assert rc == 0, err
    m = vggish.load(out)
    assert m.meta["pca"] is True and m.meta["pca_source"].endswith("(pproc.*)")
    ref = converted["pca_pth"]
    for k in ("eigen_vectors", "means"):
        assert np.asarray(m.pca[k]).tobytes() == np.asarray(ref.pca[k]).tobytes(), k
    for layer in ref.params:
        assert np.array_equal(np.asarray(m.params[layer]["kernel"]), np.asarray(ref.params[layer]["kernel"]))
    x = two_clips_16k()
    np.testing.assert_array_equal(np.asarray(m.embed(x, 16000, postprocess=True)),
                                  np.asarray(ref.embed(x, 16000, postprocess=True)))


# ----------------------------------------------------------------------------- a whole pickled model


class VGG(torch.nn.Module):
    """A small stand-in for torchvggish's ``VGG`` (same attribute names); pickled by reference
    as ``torchvggish.vggish.VGG``, a module that does not exist when the file is read."""

    __module__ = "torchvggish.vggish"

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2, 2))
        self.embeddings = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU())


def save_whole_model(path, legacy=False, wrap=False):
    """``torch.save(model, path)`` with a fake ``torchvggish.vggish`` importable only while saving."""
    fake = types.ModuleType("torchvggish.vggish")
    fake.VGG = VGG
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchvggish", types.ModuleType("torchvggish"))
        mp.setitem(sys.modules, "torchvggish.vggish", fake)
        obj = {"model": VGG()} if wrap else VGG()
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert sys.modules.get("torchvggish.vggish") is not fake
    return str(path)


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # legacy torch.save of a module
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_whole_pickled_model(tmp_path, capsys, legacy):
    whole = save_whole_model(tmp_path / "vggish.pth", legacy=legacy)
    with pytest.raises(ModuleNotFoundError):  # really not loadable here, even with weights_only=False
        torch.load(whole, weights_only=False)
    out = str(tmp_path / "never")
    err = assert_one_line_error(["convert", "vggish", whole, "--out", out], capsys,
                                r"contains a pickled torch module \(torchvggish\.vggish\.VGG\), not a state dict",
                                out=out)
    assert "torch.save(model.state_dict(), PATH)" in err and "state_dict" in err
    # the same as --pca (read first), and through the Python API
    assert_one_line_error(["convert", "vggish", "absent.pth", "--pca", whole, "--out", out], capsys,
                          r"pickled torch module \(torchvggish\.vggish\.VGG\).*state_dict", out=out)
    with pytest.raises(WeightsError, match="pickled torch module"):
        cv.read_state_dict(whole)


def test_whole_model_inside_a_dict_and_builtin_modules(tmp_path, capsys):
    wrapped = save_whole_model(tmp_path / "ckpt.pth", wrap=True)
    seq = str(tmp_path / "seq.pth")
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), seq)  # importable class: still refused
    for path, cls in ((wrapped, r"torchvggish\.vggish\.VGG"), (seq, r"torch\.nn\.modules\.container\.Sequential")):
        assert_one_line_error(["convert", "vggish", path, "--out", str(tmp_path / "never")], capsys,
                              rf"pickled torch module \({cls}\), not a state dict; save it with "
                              r"torch\.save\(model\.state_dict\(\), PATH\)")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def test_no_code_runs_for_other_pickles(tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pth")
    torch.save({"features.0.weight": Payload(marker)}, path)
    for legacy in (False, True):
        if legacy:
            torch.save({"features.0.weight": Payload(marker)}, path, _use_new_zipfile_serialization=False)
        assert_one_line_error(["convert", "vggish", path, "--out", str(tmp_path / "never")], capsys,
                              r"cannot read .*evil\.pth as a PyTorch state dict: it pickles io\.open")
        assert_one_line_error(["convert", "vggish", "absent.pth", "--pca", path, "--out", str(tmp_path / "n")],
                              capsys, r"it pickles io\.open")
        assert not os.path.exists(marker)


# ----------------------------------------------------------------------------- wrong layouts, damaged files


def test_wrong_pca_files(files, tmp_path, capsys):
    pca = files["pca"]
    vec, means = pca["pca_eigen_vectors"], pca["pca_means"]

    def npz(name, **arrays):
        p = str(tmp_path / name)
        np.savez(p, **arrays)
        return p

    def pth(name, obj, **kw):
        p = str(tmp_path / name)
        torch.save(obj, p, **kw)
        return p

    def truncated(src, name):
        p = str(tmp_path / name)
        data = open(src, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])
        return p

    npy = str(tmp_path / "eigen.npy")
    np.save(npy, vec)
    text = tmp_path / "pca.txt"
    text.write_text("pca_eigen_vectors = ...\n")
    cases = [
        (npz("keys.npz", eigen=vec, means=means),
         r"not a torchvggish PCA file: missing pca_eigen_vectors, pca_means \(it has eigen, means; "
         r"expected pca_eigen_vectors \(128, 128\) and pca_means \(128,\)"),
        (npz("half.npz", pca_means=means), r"missing pca_eigen_vectors \(it has pca_means;"),
        (npz("empty.npz"), r"missing pca_eigen_vectors, pca_means \(it is empty;"),
        (npz("vec_shape.npz", pca_eigen_vectors=vec[:, :64], pca_means=means),
         r"'pca_eigen_vectors' has shape \(128, 64\), expected \(128, 128\)"),
        (npz("means_shape.npz", pca_eigen_vectors=vec, pca_means=means[:64]),
         r"'pca_means' has shape \(64,\), expected \(128,\) or \(128, 1\)"),
        (npz("int.npz", pca_eigen_vectors=vec.astype(np.int64), pca_means=means),
         r"'pca_eigen_vectors' has dtype int64, expected floating point"),
        (npz("object.npz", pca_eigen_vectors=np.array([vec, None], dtype=object), pca_means=means),
         r"cannot read .*object\.npz as a NumPy \.npz archive \(ValueError: Object arrays cannot be loaded"),
        (truncated(files["pca_npz"], "truncated.npz"), r"truncated\.npz: a damaged or truncated zip archive"),
        (npy, r"eigen\.npy is a single NumPy \.npy array; expected an \.npz archive"),
        (pth("half.pth", {"pca_means": means}), r"not a torchvggish PCA file: missing pca_eigen_vectors"),
        (pth("transposed.pth", {"pca_eigen_vectors": vec, "pca_means": np.zeros((2, 64))}),
         r"'pca_means' has shape \(2, 64\), expected \(128,\) or \(128, 1\)"),
        (pth("list.pth", [vec, means]), r"holds a list, expected a torchvggish state dict"),
        (truncated(files["pca_pth_zip"], "truncated_zip.pth"), r"a damaged or truncated zip archive"),
        (truncated(files["pca_pth"], "truncated_legacy.pth"),
         r"cannot read .*truncated_legacy\.pth as a PyTorch state dict \(\w+Error: \S"),
        (str(text), r"cannot read .*pca\.txt as a PyTorch state dict"),
        (files["weights"], r"holds VGGish network weights, not PCA parameters"),
    ]
    out = str(tmp_path / "never")
    for path, pattern in cases:
        with pytest.raises(WeightsError, match=pattern):
            cv.read_pca(path)
        # PCA is read first: the weights are not even opened
        assert_one_line_error(["convert", "vggish", "absent.pth", "--pca", path, "--out", out], capsys, pattern,
                              out=out)


def test_wrong_weight_files(files, tmp_path, capsys):
    shapes = cv.torch_shapes()
    small = {k: torch.zeros(2) for k in shapes}
    incomplete_hub = str(tmp_path / "hub_half.pth")
    torch.save({**small, "pproc.pca_means": torch.zeros(128, 1)}, incomplete_hub)
    other_npz = str(tmp_path / "other.npz")
    np.savez(other_npz, weight=np.zeros(3))
    cases = [
        (files["pca_npz"], r"holds VGGish PCA parameters, not network weights; pass it with --pca"),
        (files["pca_pth"], r"holds VGGish PCA parameters, not network weights; pass it with --pca"),
        (other_npz, r"other\.npz is a NumPy \.npz archive \(it has weight\), not torchvggish weights"),
        (incomplete_hub, r"hub VGGish PCA entries are incomplete: missing pproc\.pca_eigen_vectors"),
    ]
    out = str(tmp_path / "never")
    for path, pattern in cases:
        with pytest.raises(WeightsError, match=pattern):
            cv.read_state_dict(path)
        assert_one_line_error(["convert", "vggish", path, "--out", out], capsys, pattern, out=out)
