"""`lvns plot`: PCA helper against NumPy's SVD, and a figure of a tiny real run."""

import json
import os

import numpy as np
import pytest

from lvns_jax import cli, config, plot, runner
from lvns_jax.errors import LvnsError

pytest.importorskip("matplotlib")


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 9)) @ np.diag([5, 3, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]) + 2.0
    proj, comps, ratio = plot.pca_2d(x)
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    for j in range(2):  # same axes up to sign
        sign = np.sign(comps[j] @ vt[j])
        np.testing.assert_allclose(comps[j], sign * vt[j], atol=1e-8)
        np.testing.assert_allclose(proj[:, j], sign * u[:, j] * s[j], atol=1e-8)
    np.testing.assert_allclose(ratio, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-10)
    # sign convention: each component's largest loading is positive
    assert np.all(comps[np.arange(2), np.argmax(np.abs(comps), axis=1)] > 0)
    # non-finite rows are left out of the fit and projected as NaN
    bad = x.copy()
    bad[3] = np.nan
    p2, c2, _ = plot.pca_2d(bad)
    assert np.all(np.isnan(p2[3])) and np.all(np.isfinite(np.delete(p2, 3, axis=0)))


def tiny_run(tmp_path, name, **kw):
    c = config.from_dict(dict(rave="toy", vggish="toy", container_size=10, breed_size=5, k=3, latent_channels=3,
                              latent_frames=8, chunk_size=5, generations=4, scan_length=2, save_every=2,
                              audio_every=0, checkpoint_every=0, progress=False, **kw))
    out = str(tmp_path / name)
    state = runner.run(c, out)
    return out, state


def test_plot_of_tiny_real_runs_writes_a_png(tmp_path):
    paper, state = tiny_run(tmp_path, "paper", noise=False)
    grad, _ = tiny_run(tmp_path, "gradient", mutation="gradient", gradient_steps=2)
    # the run saves the container embeddings next to the latents, in the same (most sparse first) order
    emb = np.load(os.path.join(paper, "audio", "gen_0004", "embeddings.npy"))
    sp = np.load(os.path.join(paper, "audio", "gen_0004", "sparseness.npy"))
    order = np.argsort(-np.asarray(state.sparseness), kind="stable")
    np.testing.assert_array_equal(emb, np.asarray(state.embeddings)[order])
    np.testing.assert_array_equal(sp, np.asarray(state.sparseness)[order])
    assert sorted(plot.saved_generations(paper)) == [0, 2, 4]
    # gradient metrics reach metrics.jsonl (and hence TensorBoard)
    with open(os.path.join(grad, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert all(np.isfinite(r["gradient_norm"]) for r in recs[1:])

    curves = plot.load_curves(paper)
    np.testing.assert_array_equal(curves.generation, [0, 1, 2, 3, 4])
    assert curves.seconds[0] == 0 and np.all(np.diff(curves.seconds) > 0)
    assert np.all(curves.min <= curves.mean) and np.all(curves.mean <= curves.max)

    out = str(tmp_path / "fig" / "cmp.png")
    assert cli.main([ "plot", paper, grad, "--out", out, "--x", "both", "--pca-generations", "0,4",
                      "--labels", "paper,gradient", "--title", "t"]) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    small = str(tmp_path / "curves.png")
    assert cli.main(["plot", paper, "--out", small, "--pca-generations", "none"]) == 0
    assert 0 < os.path.getsize(small) < os.path.getsize(out)  # PCA row + time panel make a bigger figure
    # a generation that was not saved: one-line error naming the saved ones
    with pytest.raises(LvnsError, match="saved: 0, 2, 4"):
        plot.plot_runs([paper], str(tmp_path / "x.png"), pca_generations=[3])
    assert cli.main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "y.png")]) == 2


def test_parse_generations():
    assert plot.parse_generations(None) == (True, None)
    assert plot.parse_generations("none") == (False, None)
    assert plot.parse_generations("0, 10,20") == (True, [0, 10, 20])
    with pytest.raises(LvnsError, match="--pca-generations"):
        plot.parse_generations("a,b")
