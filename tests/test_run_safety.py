"""Runs you can trust (issue 12): refused commands leave a run directory byte-identical, resume
checks every key, bad datasets and I/O errors are one line, signals at any moment stop cleanly.

All with the toy models: each run takes seconds.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lvns_jax import cli, config, runner
from lvns_jax.errors import ConfigError, LvnsError

TOY = dict(rave="toy", vggish="toy", container_size=10, breed_size=5, k=3, latent_channels=2,
           latent_frames=8, chunk_size=4, progress=False, scan_length=3, checkpoint_every=3,
           save_every=3, audio_every=3, audio_count=2)


def cfg(**kw):
    return config.from_dict({**TOY, **kw})


def items(**kw):
    return [f"{k}={v}" for k, v in {**TOY, **kw}.items()]


def tree_hash(root) -> dict:
    """Every file and folder under ``root``: path -> sha256 of its bytes (folders: 'dir')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lvns: error")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-generation run (checkpoints 0 and 3); tests copy it."""
    out = str(tmp_path_factory.mktemp("base") / "run")
    runner.run(cfg(generations=3), out)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out, symlinks=True)
    return out


# --- A: nothing written before the checks pass; resume checks config.toml and the checkpoint --------------

def test_new_run_into_an_existing_run_is_refused_byte_for_byte(run_copy, capsys):
    before = tree_hash(run_copy)
    rc = cli.main(["run", "--out", run_copy] + items(generations=3, k=4))
    err = capsys.readouterr().err
    assert rc == 2
    assert error_lines(err) == [f"lvns: error: {run_copy} already holds a run (checkpoints of generations 0, 3); "
                                f"continue it with lvns run --resume {run_copy}, or choose another --out"]
    assert "Traceback" not in err
    assert tree_hash(run_copy) == before


def test_resume_with_a_changed_key_is_refused_byte_for_byte(run_copy, capsys):
    before = tree_hash(run_copy)
    rc = cli.main(["run", "--resume", run_copy, "k=4", "seed=7", "generations=6"])
    err = capsys.readouterr().err
    assert rc == 2
    [line] = error_lines(err)
    assert line.startswith("lvns: error: seed, k: cannot change on resume (the command changes them: seed 0 -> 7, "
                           "k 3 -> 4); only ")
    assert line.endswith(" may change") and ", generations, " in line
    assert tree_hash(run_copy) == before


def test_hand_edited_config_is_refused_naming_the_key(run_copy, capsys):
    path = os.path.join(run_copy, "config.toml")
    text = open(path).read()
    assert "\nmutation_scale = 1.0\n" in text
    with open(path, "w") as f:
        f.write(text.replace("\nmutation_scale = 1.0\n", "\nmutation_scale = 0.5\n"))
    before = tree_hash(run_copy)
    rc = cli.main(["run", "--resume", run_copy, "generations=6"])
    err = capsys.readouterr().err
    assert rc == 2
    [line] = error_lines(err)
    assert line.startswith(f"lvns: error: mutation_scale: cannot change on resume ({path} was edited since "
                           f"checkpoint 3: mutation_scale 1.0 -> 0.5)")
    assert tree_hash(run_copy) == before
    # the API refuses the same, whatever config it is handed
    with pytest.raises(LvnsError, match="mutation_scale: cannot change on resume"):
        runner.run(cfg(generations=6), run_copy, resume=True)
    assert tree_hash(run_copy) == before


def test_resumable_keys_may_change_by_hand_or_by_override(run_copy):
    path = os.path.join(run_copy, "config.toml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("\ngenerations = 3\n", "\ngenerations = 5\n"))
    c = runner.resume_config(run_copy, {"chunk_size": 2})
    assert (c.generations, c.chunk_size) == (5, 2)


def test_resume_without_a_checkpoint_starts_from_generation_0(tmp_path, caplog):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.toml").write_text(cfg(generations=3).to_toml())  # as left by a stop during start-up
    with caplog.at_level(logging.INFO, logger="lvns_jax"):
        state = runner.run(runner.resume_config(str(out)), str(out), resume=True)
    assert "has no checkpoint yet" in caplog.text and "starting it from generation 0" in caplog.text
    assert "has no checkpoint yet" in (out / "run.log").read_text()
    direct = runner.run(cfg(generations=3), str(tmp_path / "direct"))
    np.testing.assert_array_equal(np.asarray(state.latents), np.asarray(direct.latents))
    assert [r["generation"] for r in map(json.loads, open(out / "metrics.jsonl"))] == [0, 1, 2, 3]


def test_resume_of_a_directory_without_config_is_refused_without_writing(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli.main(["run", "--resume", str(out)]) == 2
    assert "no config.toml there" in capsys.readouterr().err
    assert os.listdir(out) == []


# --- B: non-finite dataset latents ---------------------------------------------------------------------

def test_dataset_with_nan_is_refused_naming_file_and_item(tmp_path, capsys):
    lat = np.random.default_rng(0).normal(size=(20, 2, 12)).astype(np.float32)
    lat[7, 1, 3] = np.nan
    lat[11, 0, 0] = np.inf
    path = str(tmp_path / "latents.npy")
    np.save(path, lat)
    out = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"latents\.npy: item 7 holds NaN or inf values \(2 bad items\)"):
        runner.run(cfg(generations=3, init="dataset", dataset_path=path), out)
    rc = cli.main(["run", "--out", str(tmp_path / "run2")] + items(generations=3, init="dataset", dataset_path=path))
    err = capsys.readouterr().err
    assert rc == 2
    assert error_lines(err) == [f"lvns: error: dataset_path: {path}: item 7 holds NaN or inf values (2 bad items); "
                                "re-encode the audio or drop those items"]
    assert not os.path.exists(str(tmp_path / "run2"))  # refused before anything is written


# --- C: the last generation is saved; info lines on the console and in run.log -------------------------

def test_last_generation_saved_and_info_lines_reach_console_and_run_log(tmp_path, capsys):
    out = str(tmp_path / "r")
    rc = cli.main(["run", "--out", out] + items(generations=4))  # save_every = 3: 0, 3 and the last one, 4
    err = capsys.readouterr().err
    assert rc == 0
    assert sorted(os.listdir(os.path.join(out, "audio"))) == ["gen_0000", "gen_0003", "gen_0004"]
    last = os.path.join(out, "audio", "gen_0004")
    assert len([f for f in os.listdir(last) if f.endswith(".wav")]) == 10
    assert np.load(os.path.join(last, "latents.npy")).shape == (10, 2, 8)
    log_text = open(os.path.join(out, "run.log")).read()
    for text in ("INFO initial container of 10", "INFO compiled a block of 3 generations",
                 "INFO compiled a block of 1 generations", "INFO done: 4 generations"):
        assert text in err, text
        assert text in log_text, text
    assert "stopped" not in err
    # resume: "resumed at generation 4" on both too
    rc = cli.main(["run", "--resume", out, "generations=5"])
    err = capsys.readouterr().err
    assert rc == 0
    assert f"INFO resumed {out} at generation 4" in err
    assert f"resumed {out} at generation 4" in open(os.path.join(out, "run.log")).read()
    assert os.path.isdir(os.path.join(out, "audio", "gen_0005"))
    assert not logging.getLogger("lvns_jax").handlers  # the CLI's console handler is removed again


# --- D: signals at any moment --------------------------------------------------------------------------

def _kill_self_when(monkeypatch, module, name):
    real = getattr(module, name)

    def wrapped(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here
        return real(*a, **kw)

    monkeypatch.setattr(module, name, wrapped)


def test_sigterm_before_the_models_are_built_leaves_nothing_to_resume(tmp_path, monkeypatch):
    out = tmp_path / "r"
    _kill_self_when(monkeypatch, runner, "_setup_file_log")  # checks passed, models not built yet
    with pytest.raises(runner.Interrupted, match=r"^stopped during start-up \(SIGTERM\); nothing to resume yet$"):
        runner.run(cfg(generations=3), str(out))
    assert not (out / "config.toml").exists()
    monkeypatch.undo()
    state = runner.run(cfg(generations=3), str(out))  # not a run yet: a new one may start there
    assert int(state.generation) == 3


def test_sigterm_during_the_initial_evaluation_leaves_a_resumable_directory(tmp_path, monkeypatch):
    from lvns_jax import checkpoint

    out = tmp_path / "r"
    _kill_self_when(monkeypatch, checkpoint.Checkpoints, "__init__")  # after config.toml, before any state
    with pytest.raises(runner.Interrupted, match=r"before the first checkpoint; lvns run --resume .* starts it "
                                                 r"from generation 0$"):
        runner.run(cfg(generations=3), str(out))
    assert (out / "config.toml").exists() and not (out / "checkpoints").exists()
    monkeypatch.undo()
    state = runner.run(runner.resume_config(str(out)), str(out), resume=True)
    direct = runner.run(cfg(generations=3), str(tmp_path / "direct"))
    np.testing.assert_array_equal(np.asarray(state.latents), np.asarray(direct.latents))


def test_a_signal_after_the_last_block_does_not_stop_a_finished_run(tmp_path, monkeypatch):
    from lvns_jax import logs

    real = logs.save_generation

    def save_and_signal(directory, *a, **kw):
        real(directory, *a, **kw)
        if directory.endswith("gen_0004"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    monkeypatch.setattr(logs, "save_generation", save_and_signal)
    state = runner.run(cfg(generations=4), str(tmp_path / "r"))  # no Interrupted
    assert int(state.generation) == 4
    assert sorted(os.listdir(tmp_path / "r" / "checkpoints"))[-1] == "4"


def test_a_stop_turned_into_another_error_is_still_the_stopped_line(tmp_path, monkeypatch, capsys):
    """Code that catches the handler's exception and raises its own error from it (as an extension's
    initialisation does with ImportError): one 'stopped' line and 130, not that error's traceback."""
    def error_from_the_stop(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises here
            time.sleep(1)
        except BaseException as stop:
            try:
                raise ImportError("numpy._core.multiarray failed to import") from stop
            except ImportError as inner:
                raise ImportError("Encountered an error while initializing the extension.") from inner
        raise AssertionError("the handler did not raise")

    monkeypatch.setattr(cli, "_cmd_run", error_from_the_stop)
    rc = cli.main(["run", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.splitlines() == ["lvns: stopped during start-up (SIGTERM); nothing to resume yet"]
    assert not (tmp_path / "r").exists()


def test_sigterm_during_an_import_waits_for_the_import_to_finish(tmp_path, monkeypatch, capsys):
    """A SIGTERM that lands inside an import (here a module's top level; in CI numpy's and jaxlib's C
    initialisation under `import jax`, where a raised exception later crashed the interpreter with
    SIGSEGV/SIGABRT) is held until the import is over, then stops with the one line."""
    (tmp_path / "slow_import_mod.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.3)  # the signal is delivered here, inside the import\n"
        "COMPLETE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_import_mod", raising=False)
    after = []

    def import_then_work(args):
        import slow_import_mod  # noqa: F401

        after.append(slow_import_mod.COMPLETE)
        time.sleep(2)  # the re-sent signal stops here
        raise AssertionError("the deferred signal was lost")

    monkeypatch.setattr(cli, "_cmd_run", import_then_work)
    rc = cli.main(["run", "--out", str(tmp_path / "r")])
    assert rc == 130
    assert after == [True]  # the import ran to its end
    assert capsys.readouterr().err.splitlines() == ["lvns: stopped during start-up (SIGTERM); nothing to resume yet"]
    sys.modules.pop("slow_import_mod", None)


def test_inside_import_sees_importlib_on_the_stack(tmp_path, monkeypatch):
    from lvns_jax import signals

    (tmp_path / "probe_import_mod.py").write_text(
        "import sys\nfrom lvns_jax import signals\nSEEN = signals.inside_import(sys._getframe())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_import_mod", raising=False)
    import probe_import_mod

    assert probe_import_mod.SEEN is True
    assert signals.inside_import(sys._getframe()) is False
    sys.modules.pop("probe_import_mod", None)


def test_an_import_error_without_a_signal_still_fails_loudly(monkeypatch):
    def broken(args):
        raise ImportError("no module named nothing")

    monkeypatch.setattr(cli, "_cmd_run", broken)
    with pytest.raises(ImportError, match="no module named nothing"):
        cli.main(["run"])


def _lvns(args, **popen):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "lvns_jax.cli"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("delay", [pytest.param(d, marks=pytest.mark.slow) for d in (0.06, 0.1, 0.13, 0.2)]
                         + [0.3, pytest.param(0.6, marks=pytest.mark.slow), pytest.param(2.5, marks=pytest.mark.slow), 3.5])
def test_sigterm_early_in_a_subprocess_ends_in_one_line_and_a_usable_directory(tmp_path, delay):
    """Whatever the moment (imports, model building, initial evaluation, first compile, first blocks):
    exit status 130, one 'lvns: stopped' line, no traceback, and the directory starts or resumes."""
    out = str(tmp_path / "r")
    proc = _lvns(["run", "--out", out] + items(generations=10**7, scan_length=2, checkpoint_every=0,
                                                save_every=0, audio_every=0))
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("lvns: stopped")]
    assert len(stopped) == 1, err
    if not os.path.exists(os.path.join(out, "config.toml")):
        assert "nothing to resume yet" in stopped[0]
        state = runner.run(cfg(generations=2), out)
    else:
        assert "--resume" in stopped[0]
        state = runner.run(runner.resume_config(out, {"generations": 2}), out, resume=True)
    assert int(state.generation) >= 2


def test_sigterm_mid_run_in_a_subprocess_is_one_line_and_info_lines_reach_stderr(tmp_path):
    out = str(tmp_path / "r")
    proc = _lvns(["run", "--out", out] + items(generations=10**7, scan_length=2, checkpoint_every=0,
                                                save_every=0, audio_every=0))
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    [stopped] = [line for line in err.splitlines() if line.startswith("lvns: stopped")]
    assert stopped.startswith("lvns: stopped at generation ") and "(SIGTERM); checkpoint written" in stopped
    assert "INFO compiled a block of 2 generations" in err
    log_text = open(os.path.join(out, "run.log")).read()
    assert "INFO compiled a block of 2 generations" in log_text and "stopped at generation" in log_text


# --- E: I/O errors: one line naming the path and the cause, earlier checkpoints intact -------------------

def test_disk_full_while_saving_audio_is_one_line_and_resumable(tmp_path, capsys):
    out = tmp_path / "r"
    wav = out / "audio" / "gen_0003" / "000.wav"
    wav.parent.mkdir(parents=True)
    os.symlink("/dev/full", wav)  # writing there fails with ENOSPC, like a full disk
    rc = cli.main(["run", "--out", str(out)] + items(generations=6))
    err = capsys.readouterr().err
    assert rc == 2
    assert error_lines(err) == [f"lvns: error: cannot write {wav}: No space left on device"]
    assert "Traceback" not in err
    assert f"cannot write {wav}: No space left on device" in (out / "run.log").read_text()
    assert sorted(int(s) for s in os.listdir(out / "checkpoints") if s.isdigit()) == [0, 3]
    os.remove(wav)
    state = runner.run(runner.resume_config(str(out)), str(out), resume=True)
    assert int(state.generation) == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_permission_denied_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    (out / "audio").mkdir(parents=True)
    os.chmod(out / "audio", 0o555)
    try:
        rc = cli.main(["run", "--out", str(out)] + items(generations=3))
    finally:
        os.chmod(out / "audio", 0o755)
    err = capsys.readouterr().err
    assert rc == 2
    assert error_lines(err) == [f"lvns: error: cannot create {out / 'audio' / 'gen_0000'}: Permission denied"]


def test_checkpoint_write_error_is_one_line_and_keeps_earlier_checkpoints(run_copy, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    def fail(self, step, *a, **kw):
        try:
            raise OSError(28, "No space left on device", f"{self.directory}/{step}.orbax-checkpoint-tmp")
        except OSError as e:
            raise ValueError("tensorstore write failed\n" + "  many lines of orbax detail\n" * 50) from e

    monkeypatch.setattr(ocp.CheckpointManager, "save", fail)
    rc = cli.main(["run", "--resume", run_copy, "generations=6"])
    err = capsys.readouterr().err
    assert rc == 2
    ckdir = os.path.join(run_copy, "checkpoints")
    assert error_lines(err) == [f"lvns: error: cannot write checkpoint 6 in {ckdir}: No space left on device "
                                f"({ckdir}/6.orbax-checkpoint-tmp) (earlier checkpoints are intact: [0, 3])"]
    monkeypatch.undo()
    assert sorted(int(s) for s in os.listdir(ckdir) if s.isdigit()) == [0, 3]
    state = runner.run(runner.resume_config(run_copy), run_copy, resume=True)  # from 3, to the 6 asked
    assert int(state.generation) == 6


def _corrupt_weights(path):
    from lvns_jax.weights_io import save_params

    save_params(path, {"a": np.ones((64, 64), np.float32), "b": {"c": np.zeros(10, np.float32)}},
                {"kind": "rave", "spec": [1]})
    for root, _, files in os.walk(os.path.join(path, "params")):
        for f in files:
            p = os.path.join(root, f)
            if os.path.getsize(p) > 100:
                os.truncate(p, 20)


def test_corrupt_weights_are_one_line_without_traceback_unless_debug(tmp_path, capsys):
    weights = str(tmp_path / "w")
    _corrupt_weights(weights)
    out = str(tmp_path / "r")
    args = ["run", "--out", out] + items(generations=3, rave=weights)
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2
    [line] = error_lines(err)
    assert line.startswith(f"lvns: error: corrupt or unreadable parameters in {weights}/params: ")
    assert len(err.splitlines()) <= 3, err
    assert not os.path.exists(os.path.join(out, "config.toml"))
    with pytest.raises(LvnsError):
        cli.main(["--debug"] + args)
    with pytest.raises(LvnsError):
        cli.main(args[:1] + ["--debug"] + args[1:])


def test_readme_lists_every_resumable_key():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme[readme.index("**What `--resume` may change.**"):]
    section = section[:section.index("\n\n")]
    for key in runner.RESUMABLE_KEYS:
        assert f"`{key}`" in section, key
