"""experiments/accelerators/device_check.{sh,py}: the script parses, its dry run (and a CPU-only
machine) prints one JSON line with the accelerator part marked absent, and the parity machinery
gives zero error CPU against CPU on the toy models."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "experiments", "accelerators")
SCRIPT = os.path.join(HERE, "device_check.sh")
sys.path.insert(0, HERE)
import device_check  # noqa: E402


def test_script_parses_and_is_executable():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_prints_one_json_line_with_the_accelerator_absent():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    r = subprocess.run([SCRIPT, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["device_check"] == 1 and out["dry_run"] and out["backend"] == "cpu"
    assert out["accelerator"] is None and "absent" in out["parity"]
    assert out["bench"]["skipped"] == "dry run" and out["bench"]["sizes"] == "vctk"


def test_cpu_only_run_marks_the_accelerator_absent(capsys, monkeypatch):
    monkeypatch.setattr(device_check, "accelerator", lambda: None)
    assert device_check.main(["--sizes", "vctk"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert "absent" in out["parity"] and "absent" in out["bench"] and not out["dry_run"]


def test_compare():
    a = np.array([1.0, -2.0, 4.0])
    c = device_check.compare(a, a + np.array([0.0, 0.0, 0.04]))
    assert c["max_abs_err"] == pytest.approx(0.04) and c["rel_err"] == pytest.approx(0.01)
    assert 0.999 < c["cosine"] < 1.0 and c["finite"]
    assert not device_check.compare(a, np.array([1.0, np.nan, 4.0]))["finite"]
    assert "error" in device_check.compare(a, a[:2])


def test_toy_parity_cpu_against_cpu_is_exact():
    cpu = jax.devices("cpu")[0]
    r = device_check.parity(["rave=toy", "embedder=toy", "container_size=6", "breed_size=6", "k=2",
                             "latent_frames=16"], cpu, cpu)
    assert r["same_params"] and r["platform"] == r["ref_platform"] == "cpu"
    for name in ("audio", "embeddings", "sparseness"):
        assert r[name]["finite"] and r[name]["max_abs_err"] == 0.0 and r[name]["cosine"] == pytest.approx(1.0)
    assert r["sparseness"]["same_order"] and r["sparseness"]["from_cpu_embeddings"]["max_abs_err"] == 0.0
    assert r["audio"]["shape"][0] == 6


@pytest.mark.slow
def test_toy_bench_on_cpu(capsys):
    """The bench half (``lvns bench`` in a subprocess, its JSON summarised), on the CPU and toy models."""
    assert device_check.main(["--no-parity", "--bench-on-cpu", "--sizes", "small", "--repeats", "1",
                              "--bench-config", "rave=toy", "embedder=toy"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    (r,) = out["bench"]["results"]
    assert r["name"] == "small" and r["generation_s"] > 0 and r["individuals_per_s"] > 0
