"""gs:// run directories end to end, against a local GCS emulator (no network: localhost only).

The emulator is PyPI's ``gcp-storage-emulator`` (test extra), started by the fixture in a subprocess on
a free localhost port with in-memory storage and a ``test-bucket`` (tests/gcs_emulator.py, which adds
the ``x-goog-generation`` download header that tensorstore needs). ``STORAGE_EMULATOR_HOST`` points
gcsfs (and so etils.epath, which orbax uses for its directories) at it; lvns_jax.storage then also
points tensorstore's gcs driver (orbax's array writes) there and gives it a dummy token.
"""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from lvns_jax import config, runner, storage
from lvns_jax.errors import LvnsError

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

TOY = dict(rave="toy", vggish="toy", container_size=8, breed_size=4, k=3, latent_channels=2, latent_frames=8,
           chunk_size=4, progress=False, scan_length=2, checkpoint_every=2, save_every=2, audio_every=2,
           audio_count=2)
TIMINGS = ("individuals_per_second", "step_seconds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    port = _free_port()
    launcher = os.path.join(os.path.dirname(__file__), "gcs_emulator.py")  # + the generation headers tensorstore needs
    proc = subprocess.Popen([sys.executable, launcher, str(port), "test-bucket"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://localhost:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"GCS emulator did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env(url):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "STORAGE_EMULATOR_HOST": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _lvns(url, *args):
    items = [f"{k}={v}" for k, v in TOY.items()] if "--resume" not in args else []
    proc = subprocess.run([sys.executable, "-m", "lvns_jax.cli", "run", *args, *items], env=_env(url),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _bucket(url):
    """gcsfs on the emulator (core GCSFileSystem: JSON API only, like the emulator)."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_gs_run_resume_matches_local_run(emulator, tmp_path):
    run = "gs://test-bucket/run1"
    _lvns(emulator, "--out", run, "generations=4")
    fs = _bucket(emulator)
    assert fs.exists("test-bucket/run1/checkpoints/4")
    assert not os.path.exists("gs:") and not (tmp_path / "gs:").exists()
    _lvns(emulator, "--resume", run, "generations=6")

    local = str(tmp_path / "local")
    state = runner.run(config.from_dict({**TOY, "generations": 6}), local)

    files = set(fs.find("test-bucket/run1"))
    for name in ("config.toml", "run.log", "metrics.jsonl"):
        assert f"test-bucket/run1/{name}" in files, name
    for g in (0, 2, 4, 6):
        for name in ("000.wav", "007.wav", "latents.npy", "sparseness.npy", "embeddings.npy"):
            assert f"test-bucket/run1/audio/gen_{g:04d}/{name}" in files, (g, name)
    steps = {f.split("/")[3] for f in files if f.startswith("test-bucket/run1/checkpoints/")}
    assert {"4", "6"} <= steps  # keep_checkpoints = 3: 2, 4, 6
    events = sorted(f for f in files if f.startswith("test-bucket/run1/tb/events.out.tfevents."))
    assert len(events) == 2  # the first run's and the resumed run's

    # metrics: exactly the local run's (same seed), timings aside; one line per generation
    remote = [json.loads(x) for x in fs.cat("test-bucket/run1/metrics.jsonl").decode().splitlines() if x.strip()]
    here = [json.loads(x) for x in open(os.path.join(local, "metrics.jsonl"))]
    assert [r["generation"] for r in remote] == list(range(7))
    assert _strip(remote) == _strip(here)
    # the saved container and the config are the local run's
    lat = np.load(io.BytesIO(fs.cat("test-bucket/run1/audio/gen_0006/latents.npy")))
    np.testing.assert_array_equal(lat, np.load(os.path.join(local, "audio", "gen_0006", "latents.npy")))
    np.testing.assert_array_equal(lat, np.asarray(state.latents))
    import soundfile as sf

    wav, sr = sf.read(io.BytesIO(fs.cat("test-bucket/run1/audio/gen_0006/000.wav")), dtype="float32")
    ref, _ = sf.read(os.path.join(local, "audio", "gen_0006", "000.wav"), dtype="float32")
    assert sr == 16000
    np.testing.assert_array_equal(wav, ref)
    assert "generations = 6" in fs.cat("test-bucket/run1/config.toml").decode()
    log_text = fs.cat("test-bucket/run1/run.log").decode()
    assert log_text.count("UNTRAINED MODELS") == 2  # both runs' log lines, appended

    # TensorBoard reads the uploaded event files: every generation's scalar once
    from tensorboard.backend.event_processing import event_accumulator

    tb = tmp_path / "tb"
    tb.mkdir()
    for f in events:
        fs.get_file(f, str(tb / os.path.basename(f)))
    acc = event_accumulator.EventAccumulator(str(tb), size_guidance={"audio": 0, "histograms": 0})
    acc.Reload()
    means = acc.Scalars("container/sparseness_mean")
    assert [e.step for e in means] == list(range(7))
    assert [e.value for e in means] == pytest.approx([r["sparseness_mean"] for r in here], rel=1e-6)
    assert [a.step for a in acc.Audio("most_novel/0")] == [0, 2, 4, 6]

    # lvns plot reads a gs:// run directory (metrics + saved embeddings) next to a local one
    fig = tmp_path / "cmp.png"
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, "-m", "lvns_jax.cli", "plot", run, local, "--out", str(fig),
                           "--labels", "gs,local"], env=_env(emulator), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fig.stat().st_size > 0


def test_gs_missing_bucket_is_one_line(emulator):
    proc = subprocess.run([sys.executable, "-m", "lvns_jax.cli", "run", "--out", "gs://no-such-bucket/r",
                           *[f"{k}={v}" for k, v in TOY.items()], "generations=1"],
                          env=_env(emulator), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "lvns: error: gs://no-such-bucket: no such bucket (or no access to it)"


@pytest.mark.parametrize("url", ["s3://b/run1", "memory://run1", "file:///tmp/run1", "hdfs://h/run1"])
def test_other_url_schemes_are_refused_in_one_line(url, tmp_path):
    name = url.split(":")[0]
    with pytest.raises(LvnsError, match=rf"^{url}: {name}:// is not supported for run directories"):
        runner.run(config.from_dict({**TOY, "generations": 1}), url)
    with pytest.raises(LvnsError, match=rf"{name}:// is not supported"):
        runner.resume_config(url)
    assert not os.path.exists(url.split(":")[0] + ":")


def test_local_paths_are_plain_os_paths(tmp_path):
    p = str(tmp_path / "a")
    assert not storage.is_remote(p) and storage.join(p, "b") == os.path.join(p, "b")
    assert storage.abspath("rel") == os.path.abspath("rel")
    storage.makedirs(p)
    with storage.open(storage.join(p, "x.txt"), "w") as f:
        f.write("hi")
    assert storage.listdir(p) == ["x.txt"] and storage.isfile(os.path.join(p, "x.txt"))
    staged = storage.Staged(os.path.join(p, "x.txt"))
    assert staged.local == os.path.join(p, "x.txt") and not staged.remote
    assert storage.join("gs://b/run", "tb", "x") == "gs://b/run/tb/x"


def test_gs_without_gcsfs_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the gcs extra were not installed
    with pytest.raises(LvnsError, match=r"^gs://b/run1: gs:// run directories need fsspec and gcsfs: "
                                         r"pip install -e '\.\[gcs\]'$"):
        storage.check("gs://b/run1")
    with pytest.raises(LvnsError, match="expected gs://BUCKET/PATH"):
        storage.check("gs:///run1")
