"""Every shell command in README.md's ```bash blocks runs as written (the cheap ones) or at least parses.

The commands are taken from the README itself (continuation lines joined, comments removed) and
handled in README order in one temporary working directory (a fresh checkout's view: ``experiments/``
and ``tests/fixtures`` are linked in, ``weights/`` and ``runs/`` start empty):

* :data:`RUN`: run as written (``.venv/bin/lvns`` is this interpreter's ``-m lvns_jax.cli``), with the
  README's placeholders (``MODEL.ts``) replaced by committed fixtures;
* :data:`SKIPPED`: too expensive here or they need the user's files / machines (the reason is given);
  each must still parse: ``lvns`` arguments through the CLI's own argparse (``lvns bench`` through
  its parser), ``lvns run`` configs through ``config.load`` with every key validated (placeholder
  weight directories replaced by the toy models), scripts exist and compile (``bash -n``, ``py_compile``);
* :data:`SETUP`: the two set-up commands, kept exactly (``.ci/run`` calls the test one).

A README command in none of these fails the test: add it to RUN (cheap, seconds) or SKIPPED (why).
"""

import argparse
import os
import py_compile
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
LVNS = ".venv/bin/lvns"
FIXTURE_TS = os.path.join(ROOT, "tests", "fixtures", "rave", "v1.ts")

SETUP_EXACT = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/lvns run",
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/pytest',
)
SETUP = {" ".join(shlex.split(c)) for c in SETUP_EXACT}  # as readme_commands() normalises them

# Commands are matched by key: the whole command when the key ends in "$", else the command or any
# command starting with the key and a space (the longest matching key of RUN and SKIPPED wins).

# key -> (placeholder -> value) substitutions; run in README order
RUN = {
    ".venv/bin/lvns inspect MODEL.ts": {"MODEL.ts": FIXTURE_TS},
    ".venv/bin/lvns convert rave MODEL.ts --out weights/mymodel": {"MODEL.ts": FIXTURE_TS},
    ".venv/bin/lvns run rave=toy": {},  # the tiny stand-in models: seconds at any README size
    ".venv/bin/lvns report runs/toy": {},
    ".venv/bin/lvns plot": {},
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/lvns run experiments/configs/quick.toml": {},
}

# key -> why it is not run here (it is parsed and validated instead)
SKIPPED = {
    ".venv/bin/lvns run$": "the full default run (real-size untrained models): minutes",
    ".venv/bin/lvns run rave=weights/mymodel":
        "a search with the user's model at the default size (real-size VGGish): minutes",
    ".venv/bin/lvns run experiments/paper/small.toml": "real-size models, 40 generations: minutes",
    ".venv/bin/lvns run experiments/paper/vctk.toml": "needs converted VCTK weights",
    ".venv/bin/lvns run experiments/paper/vctk.gin": "the paper's VCTK size (500 + 100, 500 generations)",
    ".venv/bin/lvns run --resume runs/NAME-DATE": "names a run directory of the user's",
    ".venv/bin/lvns encode my_wavs/": "needs a folder of the user's recordings",
    ".venv/bin/lvns run init=dataset": "needs the user's encoded latents and model",
    ".venv/bin/lvns run experiments/configs/big.toml": "65,536 individuals: for many devices",
    "gcloud compute tpus tpu-vm ssh": "a TPU pod slice and a bucket",
    "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234": "several GPU hosts",
    ".venv/bin/lvns bench$": "benchmarks at the small and VCTK sizes: many minutes",
    ".venv/bin/lvns bench --scaling": "scaling benchmark: many minutes",
    ".venv/bin/lvns bench --baseline": "needs the reference venv; many minutes",
    "REF_VENV=refvenv bash experiments/baselines/setup_ref_venv.sh": "installs the original's PyTorch stack",
    "refvenv/bin/python experiments/baselines/make_weights.py": "needs the reference venv",
}


def _matches(key: str, cmd: str) -> bool:
    if key.endswith("$"):
        return cmd == key[:-1]
    return cmd == key or cmd.startswith(key + " ")


def classify(cmd: str) -> tuple[str, str] | None:
    """("run" | "skip" | "setup", key) of a README command, or None when no key matches."""
    if cmd in SETUP:
        return "setup", cmd
    found = [(len(k.rstrip("$")), kind, k) for kind, table in (("run", RUN), ("skip", SKIPPED))
             for k in table if _matches(k, cmd)]
    return max(found)[1:] if found else None


# values that stand in for the user's files when a skipped `lvns run` is validated
PLACEHOLDER_KEYS = ("rave", "vggish", "embedder")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def readme_blocks(lang: str) -> list[tuple[int, str]]:
    """(line of the opening fence, text) of every fenced block of ``lang``."""
    blocks, lines, start, inside, keep = [], [], 0, False, False
    for n, line in enumerate(open(README, encoding="utf-8").read().splitlines(), 1):
        if line.startswith("```"):
            if not inside:
                inside, keep, start, lines = True, line[3:].strip() == lang, n, []
            else:
                if keep:
                    blocks.append((start, "\n".join(lines)))
                inside = False
        elif inside and keep:
            lines.append(line)
    return blocks


def readme_commands() -> list[tuple[int, str, list[str]]]:
    """(line, normalised command, tokens) of every command in the README's bash blocks."""
    out = []
    for start, text in readme_blocks("bash"):
        logical, first = "", None
        for i, line in enumerate(text.splitlines()):
            if first is None:
                first = start + 1 + i
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            tokens = shlex.split(logical, comments=True)
            if tokens:
                out.append((first, " ".join(tokens), tokens))
            logical, first = "", None
    return out


def _split_env(tokens):
    env = {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        k, v = tokens[0].split("=", 1)
        env[k] = v
        tokens = tokens[1:]
    return env, tokens


class _Parsed(Exception):
    pass


def _check_lvns_parses(args: list[str], cwd: str) -> None:
    """The CLI's argparse accepts ``args``; ``lvns run`` configs load with every key validated."""
    from lvns_jax import cli, config, storage

    parsed, extra = cli.build_parser().parse_known_args(args)  # SystemExit(2) on a bad option
    if parsed.command == "bench":
        from lvns_jax import bench

        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, *a, **k):
            original(self, *a, **k)
            raise _Parsed

        argparse.ArgumentParser.parse_args = parse_then_stop
        try:
            with pytest.raises(_Parsed):
                bench.main(extra + parsed.rest)
        finally:
            argparse.ArgumentParser.parse_args = original
        return
    assert not extra, f"unrecognized arguments: {extra}"
    if parsed.command != "run":
        return
    if parsed.out:
        storage.check(parsed.out)
    if parsed.resume:
        return
    items = list(parsed.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    if path:
        assert os.path.isfile(os.path.join(cwd, path)), f"config file {path} does not exist"
        path = os.path.join(cwd, path)
    fixed = []
    for item in items:
        key, value = item.split("=", 1)
        if key in PLACEHOLDER_KEYS and value.startswith("weights/") and not os.path.isdir(os.path.join(cwd, value)):
            value = "toy"
        elif key == "latent_channels" and value == "N":
            value = "8"
        elif key == "dataset_path" and not os.path.exists(os.path.join(cwd, value)):
            value = os.path.join(cwd, "placeholder_latents.npy")
            np.save(value, np.zeros((64, 8, 96), np.float32))
        fixed.append(f"{key}={value}")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        config.load(path, fixed)
    finally:
        os.chdir(old)


def check_parses(tokens: list[str], cwd: str) -> None:
    env, argv = _split_env(tokens)
    prog = argv[0]
    if prog == LVNS:
        _check_lvns_parses(argv[1:], cwd)
    elif prog == "gcloud":
        inner = argv[argv.index("--command") + 1]
        for part in inner.split("&&"):
            sub = shlex.split(part)
            if sub[0] != "cd":
                check_parses(sub, cwd)
    elif prog == "bash":
        script = os.path.join(cwd, argv[1])
        assert os.path.isfile(script), f"{argv[1]} does not exist"
        subprocess.run(["bash", "-n", script], check=True)
    elif prog.endswith("/python"):
        script = os.path.join(cwd, argv[1])
        assert os.path.isfile(script), f"{argv[1]} does not exist"
        py_compile.compile(script, doraise=True, cfile=os.path.join(cwd, "compiled.pyc"))
    else:
        raise AssertionError(f"no parse check for {prog!r}")


def run_command(tokens: list[str], subs: dict, cwd: str) -> subprocess.CompletedProcess:
    env, argv = _split_env([subs.get(t, t) for t in tokens])
    assert argv[0] == LVNS, argv
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-m", "lvns_jax.cli", *argv[1:]], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def checkout(tmp_path):
    """A working directory that looks like a fresh checkout for the README's commands."""
    for name in ("experiments", "tests"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / "weights").mkdir()
    return str(tmp_path)


def test_every_readme_command_runs_or_parses(checkout):
    commands = readme_commands()
    assert len(commands) >= 20, "README commands not found (code blocks must be ```bash)"
    unknown = [f"README.md:{n}: {c}" for n, c, _ in commands if classify(c) is None]
    assert not unknown, ("commands matching no key of RUN / SKIPPED / SETUP in tests/test_readme.py (add one):\n"
                         + "\n".join(unknown))
    stale = [k for k in list(RUN) + list(SKIPPED) if not any(_matches(k, c) for _, c, _ in commands)]
    assert not stale, f"keys matching no README.md command (remove them from tests/test_readme.py): {stale}"
    try:
        import torch  # noqa: F401  (lvns inspect / convert)
        have_torch = True
    except ImportError:
        have_torch = False
    failures = []
    for n, cmd, tokens in commands:
        kind, key = classify(cmd)
        if kind == "setup":
            continue
        if kind == "run":
            if "MODEL.ts" in tokens and not have_torch:
                check_parses(tokens, checkout)
                continue
            proc = run_command(tokens, RUN[key], checkout)
            if proc.returncode != 0:
                failures.append(f"README.md:{n}: {cmd}\n  exit {proc.returncode}: {proc.stderr[-2000:]}")
            continue
        try:
            check_parses(tokens, checkout)
        except (Exception, SystemExit) as e:
            failures.append(f"README.md:{n}: {cmd} (skipped: {SKIPPED[key]})\n  does not parse: "
                            f"{type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
    # what the commands that ran made
    assert os.path.isfile(os.path.join(checkout, "runs", "toy", "report.html"))
    assert os.path.isdir(os.path.join(checkout, "runs", "q8", "checkpoints"))
    assert os.path.getsize(os.path.join(checkout, "cmp.png")) > 0
    if have_torch:
        assert os.listdir(os.path.join(checkout, "weights", "mymodel"))


def test_setup_commands_are_kept_exactly():
    block_lines = {line for _, text in readme_blocks("bash") for line in text.splitlines()}
    for command in SETUP_EXACT:
        assert command in block_lines, f"README.md lost the set-up command {command!r}"
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    assert SETUP_EXACT[1] in ci  # CI runs exactly the README's test command


def test_readme_names_no_paths_outside_the_project():
    text = open(README, encoding="utf-8").read()
    assert not re.findall(r"\.\./|/work/|~/", text), "README.md refers to paths outside the project"


def test_config_files_named_in_the_readme_exist():
    text = open(README, encoding="utf-8").read()
    for path in sorted(set(re.findall(r"[\w./-]+/[\w.-]+\.(?:toml|gin)\b", text))):
        if path.startswith(("runs/", "DIR/", "RUN_DIR/")):
            continue
        assert os.path.isfile(os.path.join(ROOT, path)), f"README.md names {path}, which does not exist"


def test_readme_python_blocks_compile():
    for start, text in readme_blocks("python"):
        compile(text, f"README.md:{start}", "exec")
