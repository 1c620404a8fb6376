"""Every config under experiments/ is valid, and `lvns bench` measures what it says."""

from __future__ import annotations

import glob
import os

import pytest

from lvns_jax import bench, config as config_lib
from lvns_jax.errors import LvnsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOMLS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "**", "*.toml"), recursive=True)
               if not {"runs", "data"} & set(os.path.relpath(p, ROOT).split(os.sep)))  # not run outputs


def test_there_are_experiment_configs():
    names = {os.path.basename(p) for p in TOMLS}
    assert {"vctk.toml", "small.toml", "rule_farthest.toml", "control_random.toml"} <= names


@pytest.mark.parametrize("path", TOMLS, ids=[os.path.relpath(p, ROOT) for p in TOMLS])
def test_experiment_config_is_valid(path, tmp_path):
    values = config_lib.read_toml(path)
    # weights and datasets a user converts/encodes first are replaced by built-in stand-ins
    if not values.get("rave", "untrained:v1").startswith(("untrained:", "toy")):
        values["rave"] = "untrained:v1"
    if values.get("vggish", "untrained") not in ("untrained", "toy"):
        values["vggish"] = "untrained"
    if values.get("init") == "dataset" and not os.path.isfile(os.path.join(ROOT, values.get("dataset_path", ""))):
        values["dataset_path"] = str(tmp_path / "latents.npz")
        open(values["dataset_path"], "wb").close()
    elif values.get("init") == "dataset":
        values["dataset_path"] = os.path.join(ROOT, values["dataset_path"])
    cfg = config_lib.from_dict(values)
    assert cfg.k < cfg.pool_size


def test_paper_sizes():
    vctk = config_lib.read_toml(os.path.join(ROOT, "experiments", "paper", "vctk.toml"))
    assert (vctk["container_size"], vctk["breed_size"], vctk["k"]) == (500, 100, 50)
    assert (vctk["latent_channels"], vctk["latent_frames"]) == (8, 64)
    far = config_lib.read_toml(os.path.join(ROOT, "experiments", "paper", "rule_farthest.toml"))
    assert far["sparseness_rule"] == "farthest" and far["reevaluate_container"] is True


def test_bench_measure_toy():
    cfg = config_lib.from_dict(dict(rave="toy", vggish="toy", container_size=12, breed_size=6, k=4,
                                    latent_channels=4, latent_frames=8, chunk_size=4, progress=False))
    r = bench.measure(cfg, repeats=2)
    assert set(r["stages"]) == set(bench.STAGES)
    for s in bench.STAGES:
        assert r["stages"][s]["seconds"] > 0 and r["stages"][s]["compile_s"] >= 0
    assert r["individuals_per_s"] == pytest.approx(6 / r["generation_s"])
    assert r["config"]["container_size"] == 12 and r["peak_rss_mb"] > 0
    assert "     12      6    4" in bench.table([{**r, "name": "x"}])


@pytest.mark.parametrize("extra", [dict(mutation="gradient", gradient_steps=1),
                                   pytest.param(dict(emitter="mix", emitter_mix="gradient:0.5,paper", gradient_steps=1),
                                                marks=pytest.mark.slow),
                                   pytest.param(dict(archive="threshold", knn="incremental"), marks=pytest.mark.slow)])
def test_bench_times_the_step_lvns_run_runs(extra):
    """Bench uses the step's own stage functions and search.step itself: every emitter/scorer/archive."""
    from lvns_jax import search
    from lvns_jax.assemble import assemble

    cfg = config_lib.from_dict(dict(rave="toy", embedder="toy", container_size=12, breed_size=6, k=4,
                                    latent_channels=4, latent_frames=8, chunk_size=4, progress=False, **extra))
    r = bench.measure(cfg, repeats=1)
    assert r["stages"]["step"]["seconds"] > 0 and r["config"]["emitter"] == type(assemble(cfg).emitter).__name__
    # the synthetic state is one the step accepts: the very function lvns run compiles
    e = assemble(cfg)
    s, m = search.step(e, bench.synthetic_state(e))
    assert int(s.generation) == 1


def test_bench_synthetic_state_shapes():
    cfg = config_lib.from_dict(dict(rave="toy", embedder="toy", container_size=10, breed_size=5, k=3,
                                    latent_channels=4, latent_frames=8, progress=False))
    from lvns_jax.assemble import assemble

    st = bench.synthetic_state(assemble(cfg))
    assert st.latents.shape == (10, 4, 8) and st.embeddings.shape[0] == 10


def test_bench_cli_errors():
    with pytest.raises(LvnsError, match="--baseline needs"):
        bench.main(["--baseline", "--sizes", "small"])
    with pytest.raises(LvnsError, match="unknown size"):
        bench.main(["--sizes", "huge", "rave=toy", "vggish=toy"])


def test_clips_shorter_than_a_vggish_example_are_refused():
    from lvns_jax.errors import ConfigError
    from lvns_jax import embedders

    cfg = config_lib.from_dict(dict(latent_frames=20, progress=False))
    with pytest.raises(ConfigError, match=r"latent_frames: 20 frames .* use latent_frames >= 21"):
        embedders.build_vggish(cfg, "untrained", 44100, 20 * 2048)  # 40960 samples < 42998 (one example at 44.1 kHz)
    embedders.build_vggish(cfg.replace(latent_frames=21), "untrained", 44100, 21 * 2048)  # 43008 samples: one example
    embedders.build_toy(cfg.replace(vggish="toy"), "untrained", 44100, 20 * 2048)  # toy embedder: any length
    assert cfg.replace(vggish="toy").embedder == "toy"  # the legacy key is read as embedder


def test_bench_through_the_cli(capsys):
    from lvns_jax import cli

    assert cli.main(["bench", "--sizes", "huge", "rave=toy", "vggish=toy"]) == 2
    assert "unknown size 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # options of other commands are still checked
        cli.main(["run", "--no-such-option"])


def test_failed_baseline_is_reported_not_raised():
    r = bench.run_baseline("/bin/false", "x.ts", "x.pth", 50, 30, 30, 64, 1)
    assert r == {"error": "exit 1: "}
