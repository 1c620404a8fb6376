"""Run directory: TensorBoard read back, metrics file, WAVs, checkpoints, resume, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import soundfile as sf

from lvns_jax import config, runner
from lvns_jax.errors import LvnsError

TOY = dict(rave="toy", vggish="toy", container_size=10, breed_size=5, k=3, latent_channels=2,
           latent_frames=8, chunk_size=4, progress=False, scan_length=3, checkpoint_every=3,
           save_every=3, audio_every=3, audio_count=2)


def cfg(**kw):
    return config.from_dict({**TOY, **kw})


def final_arrays(state):
    """Every checkpointed array (archive included), keys as their data."""
    out = {}
    for path, v in jax.tree_util.tree_leaves_with_path(state.evolution_arrays()):
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        out[jax.tree_util.keystr(path)] = np.asarray(v)
    return out


def test_run_directory_contents_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    out = str(tmp_path / "run")
    state = runner.run(cfg(generations=6), out)
    assert int(state.generation) == 6
    assert config.load(os.path.join(out, "config.toml")) == cfg(generations=6)
    # metrics: one line per generation, 0..6
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["generation"] for r in recs] == list(range(7))
    assert {"sparseness_mean", "sparseness_min", "sparseness_median", "sparseness_max",
            "children_sparseness_mean", "new_survivors", "invalid_children",
            "individuals_per_second", "step_seconds"} <= set(recs[-1])
    np.testing.assert_allclose(recs[-1]["sparseness_mean"], float(np.mean(state.sparseness)), rtol=1e-6)
    # TensorBoard event file read back with TensorBoard's own reader
    acc = event_accumulator.EventAccumulator(os.path.join(out, "tb"), size_guidance={"audio": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("container/sparseness_mean", "container/sparseness_min", "container/sparseness_median",
                "container/sparseness_max", "children/sparseness_mean", "selection/new_survivors",
                "selection/invalid_children", "perf/individuals_per_second", "perf/step_seconds"):
        assert tag in tags["scalars"], tag
    means = acc.Scalars("container/sparseness_mean")
    assert [e.step for e in means] == list(range(7))
    np.testing.assert_allclose([e.value for e in means], [r["sparseness_mean"] for r in recs], rtol=1e-6)
    assert "container/sparseness" in tags["histograms"]
    config_text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "container_size = " in config_text and "rave = \"toy\"" in config_text
    assert {h.step for h in acc.Histograms("container/sparseness")} >= {0, 3, 6}
    assert "most_novel/0" in tags["audio"] and "most_novel/1" in tags["audio"]
    assert [a.step for a in acc.Audio("most_novel/0")] == [0, 3, 6]
    # WAVs + latents of the container every save_every generations, most sparse first
    for g in (0, 3, 6):
        d = os.path.join(out, "audio", f"gen_{g:04d}")
        wavs = sorted(f for f in os.listdir(d) if f.endswith(".wav"))
        assert len(wavs) == 10
        audio, sr = sf.read(os.path.join(d, wavs[0]))
        assert sr == 16000 and audio.shape == (8 * 64,)
        sp = np.load(os.path.join(d, "sparseness.npy"))
        assert np.all(np.diff(sp) <= 0)
    np.testing.assert_array_equal(np.load(os.path.join(out, "audio", "gen_0006", "latents.npy")),
                                  np.asarray(state.latents))
    assert sorted(os.listdir(os.path.join(out, "checkpoints")))  # orbax steps exist


@pytest.mark.parametrize("extra", [dict(), pytest.param(dict(archive="threshold", archive_size=10, archive_rate=0.2),
                                                 marks=pytest.mark.slow)])
def test_resume_is_bit_exact(tmp_path, extra):
    whole = runner.run(cfg(generations=6, **extra), str(tmp_path / "whole"))
    part = str(tmp_path / "part")
    with pytest.raises(runner.Interrupted):
        runner.run(cfg(generations=6, **extra), part, stop_after=3)
    resumed = runner.run(runner.resume_config(part), part, resume=True)
    a, b = final_arrays(whole), final_arrays(resumed)
    assert a.keys() == b.keys() and (not extra or any("archive" in k for k in a))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    recs_whole = [json.loads(x) for x in open(tmp_path / "whole" / "metrics.jsonl")]
    recs_part = [json.loads(x) for x in open(os.path.join(part, "metrics.jsonl"))]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("individuals_per_second", "step_seconds")} for r in rs]
    assert strip(recs_whole) == strip(recs_part)


def test_resume_can_extend_but_not_change_the_search(tmp_path):
    out = str(tmp_path / "r")
    runner.run(cfg(generations=3), out)
    with pytest.raises(LvnsError, match="k: cannot change on resume"):
        runner.resume_config(out, {"k": 4})
    state = runner.run(runner.resume_config(out, {"generations": 6}), out, resume=True)
    direct = runner.run(cfg(generations=6), str(tmp_path / "direct"))
    np.testing.assert_array_equal(np.asarray(state.latents), np.asarray(direct.latents))


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
    out = str(tmp_path / "r")
    runner.run(cfg(generations=6), out)
    ckdir = os.path.join(out, "checkpoints")
    latest = os.path.join(ckdir, "6")
    # damage every file of the latest checkpoint's state
    for root, _, files in os.walk(os.path.join(latest, "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    c = runner.resume_config(out, {"generations": 6})
    from lvns_jax.assemble import assemble
    from lvns_jax.checkpoint import Checkpoints

    template = assemble(c).template()
    with caplog.at_level("WARNING", logger="lvns_jax"):
        state = Checkpoints(ckdir).restore_latest(template)
    assert int(state.generation) == 3
    assert "checkpoint 6" in caplog.text and "falling back" in caplog.text


def test_refuses_to_overwrite_a_run(tmp_path):
    out = str(tmp_path / "r")
    runner.run(cfg(generations=1), out)
    with pytest.raises(LvnsError, match="--resume"):
        runner.run(cfg(generations=1), out)


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_sigterm_writes_checkpoint_and_resume_finishes(tmp_path):
    out = str(tmp_path / "r")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "-m", "lvns_jax.cli", "run", "--out", out] + \
        [f"{k}={v}" for k, v in {**TOY, "generations": 10_000, "scan_length": 2, "checkpoint_every": 0,
                                  "save_every": 0, "audio_every": 0}.items()]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint written" in err and "--resume" in err
    steps = sorted(int(s) for s in os.listdir(os.path.join(out, "checkpoints")) if s.isdigit())
    last = steps[-1]
    assert last >= 4  # any generation: a stop takes effect within one generation, not at a block's end
    recs = [json.loads(x) for x in open(metrics)]
    assert recs[-1]["generation"] == last
    # resume to a nearby end and compare with an uninterrupted run
    c = runner.resume_config(out, {"generations": last + 2})
    resumed = runner.run(c, out, resume=True)
    direct = runner.run(c, str(tmp_path / "direct"))
    np.testing.assert_array_equal(np.asarray(resumed.latents), np.asarray(direct.latents))


def test_next_stop_grid():
    c = cfg(generations=10, scan_length=4, checkpoint_every=3, save_every=0, audio_every=0)
    stops, g = [], 0
    while g < 10:
        g = runner.next_stop(g, c)
        stops.append(g)
    assert stops == [3, 4, 6, 8, 9, 10]


def test_a_checkpoint_of_the_old_state_format_is_refused_in_one_line(tmp_path):
    """Checkpoints written before identity keys and archives (no ``_state_format``) are refused."""
    import orbax.checkpoint as ocp

    from lvns_jax.assemble import assemble
    from lvns_jax.checkpoint import Checkpoints

    c = cfg()
    e = assemble(c)
    state = e.init()
    old = {f: getattr(state, f) for f in ("key", "generation", "latents", "embeddings", "sparseness", "born",
                                           "invalid_total")}
    mgr = ocp.CheckpointManager(str(tmp_path / "ck"), options=ocp.CheckpointManagerOptions(create=True))
    mgr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(old), config=ocp.args.JsonSave({"k": 3})))
    mgr.wait_until_finished()
    mgr.close()
    with pytest.raises(LvnsError, match=r"^checkpoint 0 in .* holds state format 1, this lvns-jax reads format 2"):
        Checkpoints(str(tmp_path / "ck")).restore_latest(e.template())


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_sigterm_inside_a_compiled_block_stops_within_one_generation(tmp_path):
    """A 20-generation block; SIGTERM arrives during generation 3's decoding: the run stops after at
    most one more generation, writes that checkpoint, and resumes to the uninterrupted result."""
    import functools

    from lvns_jax.assemble import build_models
    from lvns_jax.models import toy

    c = cfg(generations=20, scan_length=20, checkpoint_every=0, save_every=0, audio_every=0)
    calls = {"n": 0}

    def maybe_signal():
        calls["n"] += 1
        if calls["n"] == 3 * 2:  # 2 chunked decode calls per generation (breed 5 in chunks of 4): generation 3
            os.kill(os.getpid(), signal.SIGTERM)
        if calls["n"] >= 3 * 2:  # toy generations take microseconds: give the main thread (it polls every
            time.sleep(0.1)  # 50 ms) time to run the handler, or the block may end before it does

    def decode(params, z, key):
        jax.debug.callback(maybe_signal)
        return toy.decode_noisy(params, z, key)

    models = build_models(c).replace(decode=decode)
    out = str(tmp_path / "r")
    with pytest.raises(runner.Interrupted, match=r"stopped at generation \d+ \(SIGTERM\)") as info:
        runner.run(c, out, models=models)
    from lvns_jax.checkpoint import step_dirs

    stopped = int(str(info.value).split("generation ")[1].split()[0])
    assert 1 <= stopped <= 4  # the signal came during the first generations of a 20-generation block
    assert max(step_dirs(os.path.join(out, "checkpoints"))) == stopped
    resumed = runner.run(runner.resume_config(out), out, resume=True, models=build_models(c).replace(decode=functools.partial(toy.decode_noisy)))
    whole = runner.run(c, str(tmp_path / "w"))
    a, b = final_arrays(whole), final_arrays(resumed)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
