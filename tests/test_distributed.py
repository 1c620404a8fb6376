"""Population sharding (lvns_jax.distributed) on 8 forced CPU devices, in a subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts):

* 1 and 8 devices (default; 1, 2, 4 and 8 in the slow test) give the same survivors in the same
  order (equal birth generations, latents equal to ~1 ulp), embeddings/sparseness to float
  tolerance, with decoder noise on;
* the state really is split over the devices;
* an orbax checkpoint written on 8 devices restores on 1 and continues identically;
* the incremental kNN on 8 devices (4 in the slow test) selects like brute force on 1;
* the whole runner (TensorBoard, checkpoints, resume) on 8 devices, resumed on 1 (slow);
* two processes (jax.distributed.initialize + gloo CPU collectives) x 2 devices: process-0
  bookkeeping, multi-process orbax checkpoints, resumed on 1 process (slow).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lvns_jax import config, distributed
from lvns_jax.errors import ConfigError

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from lvns_jax import config, distributed, search, runner
    from lvns_jax.assemble import assemble
    from lvns_jax.checkpoint import Checkpoints

    out, devices, inc = sys.argv[1], [int(d) for d in sys.argv[2].split(",")], int(sys.argv[3])
    chunks = [int(c) for c in sys.argv[4].split(",")]
    extra = json.loads(sys.argv[5])
    assert jax.device_count() == 8, jax.devices()
    BASE = dict(rave="toy", embedder="toy", container_size=32, breed_size=16, k=5, latent_channels=3,
                latent_frames=8, chunk_size=2, progress=False, noise=True, seed=3)
    BASE.update(extra)
    summary = {}

    def arrays(s):
        return {f: np.asarray(getattr(s, f)) for f in ("latents", "embeddings", "sparseness", "born", "slot")}

    for d in devices:  # 4 generations on d devices (one compiled lax.scan block), for every chunk size
        for c in chunks:
            e = assemble(config.from_dict({**BASE, "devices": d, "chunk_size": c}))
            s, m = e.run_block(e.init(), 4)
            summary[f"{d}x{c}"] = dict(shards=len(s.latents.sharding.device_set),
                                       spec=str(getattr(s.latents.sharding, "spec", None)),
                                       emb_shards=len(s.embeddings.sharding.device_set),
                                       generation=int(s.generation),
                                       new_survivors=np.asarray(m["new_survivors"]).tolist())
            np.savez(os.path.join(out, f"d{d}x{c}.npz"), **arrays(s))
            if d == 1 and c == chunks[0]:
                e1, s1 = e, s
            if d == 8 and c == chunks[0]:  # checkpoint written on 8 devices
                ck = Checkpoints(os.path.join(out, "ckpt8"))
                ck.save(s)
                ck.close()
    # 1 device: 4 more generations; the 8-device checkpoint restored on 1 device: the same 4 more
    s1, _ = e1.run_block(s1, 4)
    np.savez(os.path.join(out, "d1_8gen.npz"), **arrays(s1))
    if 8 in devices:
        ck = Checkpoints(os.path.join(out, "ckpt8"))
        r = e1.attach(ck.restore_latest(e1.template()))
        ck.close()
        summary["restored"] = dict(generation=int(r.generation), shards=len(r.latents.sharding.device_set))
        r, _ = e1.run_block(r, 4)
        np.savez(os.path.join(out, "restored.npz"), **arrays(r))

    if inc:  # incremental kNN on `inc` devices
        e = assemble(config.from_dict({**BASE, "devices": inc, "knn": "incremental", "chunk_size": chunks[0]}))
        s, _ = e.run_block(e.init(), 4)
        summary["incremental"] = dict(shards=len(s.latents.sharding.device_set))
        np.savez(os.path.join(out, "inc.npz"), **arrays(s))
        for d in (1, inc):  # a novelty archive, its rows split over the devices
            e = assemble(config.from_dict({**BASE, "devices": d, "archive": "threshold", "archive_size": 16,
                                           "chunk_size": chunks[0]}))
            s, _ = e.run_block(e.init(), 4)
            summary[f"archive{d}"] = dict(shards=len(s.archive.embeddings.sharding.device_set), size=int(s.archive.size))
            np.savez(os.path.join(out, f"archive{d}.npz"), **arrays(s), archive_born=np.asarray(s.archive.born),
                     archive_slot=np.asarray(s.archive.slot), archive_emb=np.asarray(s.archive.embeddings))

    if "--runner" in sys.argv:  # the whole run directory machinery: 8 devices, then resume on 1
        R = dict(BASE, generations=4, scan_length=2, checkpoint_every=2, save_every=2, audio_every=2)
        try:
            runner.run(config.from_dict({**R, "devices": 8}), os.path.join(out, "run"), stop_after=2)
        except runner.Interrupted:
            pass
        a = runner.run(config.from_dict({**R, "devices": 1}), os.path.join(out, "run"), resume=True)
        b = runner.run(config.from_dict({**R, "devices": 1}), os.path.join(out, "ref"))
        summary["runner"] = dict(same_latents=bool(np.allclose(np.asarray(a.latents), np.asarray(b.latents), rtol=0, atol=1e-6)
                                                    and np.array_equal(np.asarray(a.born), np.asarray(b.born))),
                                 sparseness_err=float(np.abs(np.asarray(a.sparseness) - np.asarray(b.sparseness)).max()),
                                 generation=int(a.generation))
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"))
""")


def _run_script(tmp, devices, inc, *flags, chunks="2", extra=None):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    path = tmp / "script.py"
    path.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(path), str(tmp), devices, str(inc), chunks, json.dumps(extra or {}),
                           *flags], env=env, capture_output=True, text=True,
                          timeout=900, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "summary.json").read_text())


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, _run_script(tmp, "1,8", 8, chunks="2,7")


def _load(tmp, name):
    with np.load(tmp / f"{name}.npz") as z:
        return dict(z)


def _assert_same_run(a, b, emb_atol=1e-6, rtol=1e-5):
    # Same survivors: the same individuals in the same order. Latents agree to the last bits only
    # (XLA fuses the mutation's normal draw differently in the partitioned program: FMA contraction);
    # a different survivor would differ by O(1).
    np.testing.assert_allclose(a["latents"], b["latents"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a["born"], b["born"])
    np.testing.assert_array_equal(a["slot"], b["slot"])
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=rtol, atol=emb_atol)
    np.testing.assert_allclose(a["sparseness"], b["sparseness"], rtol=rtol, atol=1e-6)


def _check_devices(tmp, summary, devices, chunks=(2,), **tol):
    """Every (devices, chunk_size) pair gives the run of 1 device with the first chunk size."""
    ref_name = f"1x{chunks[0]}"
    ref = _load(tmp, f"d{ref_name}")
    for d in devices:
        for c in chunks:
            name = f"{d}x{c}"
            _assert_same_run(_load(tmp, f"d{name}"), ref, **tol)
            assert summary[name]["new_survivors"] == summary[ref_name]["new_survivors"], name
            assert summary[name]["shards"] == d and summary[name]["emb_shards"] == d  # really split
    assert summary[ref_name]["generation"] == 4
    assert np.any(ref["born"] > 0)  # children did survive: the comparison is not of initial containers


def test_1_and_8_devices_and_chunk_sizes_same_survivors_with_noise_on(eight):
    tmp, summary = eight
    _check_devices(tmp, summary, (1, 8), (2, 7))
    assert summary["8x2"]["spec"] == "P('pop',)"


def test_checkpoint_from_8_devices_restores_on_1_and_continues_identically(eight):
    tmp, summary = eight
    assert summary["restored"] == {"generation": 4, "shards": 1}
    _assert_same_run(_load(tmp, "restored"), _load(tmp, "d1_8gen"))


def test_incremental_knn_on_8_devices_equals_brute_force_on_1(eight):
    tmp, summary = eight
    assert summary["incremental"]["shards"] == 8
    _assert_same_run(_load(tmp, "inc"), _load(tmp, "d1x2"))


def test_archive_on_8_devices_equals_1(eight):
    tmp, summary = eight
    assert summary["archive8"]["shards"] == 8 and summary["archive8"]["size"] == summary["archive1"]["size"] > 0
    a, b = _load(tmp, "archive1"), _load(tmp, "archive8")
    _assert_same_run(a, b)
    np.testing.assert_array_equal(a["archive_born"], b["archive_born"])
    np.testing.assert_array_equal(a["archive_slot"], b["archive_slot"])
    np.testing.assert_allclose(a["archive_emb"], b["archive_emb"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_1_2_4_8_devices_x_chunk_1_7_32_and_the_runner_on_8_resumed_on_1(tmp_path):
    summary = _run_script(tmp_path, "1,2,4,8", 4, "--runner", chunks="1,7,32")
    _check_devices(tmp_path, summary, (1, 2, 4, 8), (1, 7, 32))
    assert summary["incremental"]["shards"] == 4
    _assert_same_run(_load(tmp_path, "inc"), _load(tmp_path, "d1x1"))
    assert summary["runner"]["same_latents"] and summary["runner"]["generation"] == 4
    assert summary["runner"]["sparseness_err"] < 1e-5
    assert (tmp_path / "run" / "tb").is_dir() and (tmp_path / "run" / "audio" / "gen_0002").is_dir()


@pytest.mark.slow
def test_untrained_real_size_v2_small_same_run_on_1_and_4_devices_with_noise_on(tmp_path):
    """Real-size (untrained) RAVE v2_small + VGGish, noise on: 1 and 4 devices x chunk 1 and 3 agree."""
    extra = dict(rave="untrained:v2_small", embedder="untrained:vggish", container_size=8, breed_size=4, k=3,
                 latent_channels=8, latent_frames=96)
    summary = _run_script(tmp_path, "1,4", 0, chunks="1,3", extra=extra)
    # VGGish's convolutions round differently for other batch shapes (embeddings differ by <= 3e-5):
    # the survivors, their order and the latents are what must agree
    _check_devices(tmp_path, summary, (1, 4), (1, 3), emb_atol=1e-4, rtol=1e-4)


def test_device_count_resolution():
    base = dict(rave="toy", embedder="toy", container_size=12, breed_size=6, k=4, latent_channels=3,
                latent_frames=8, progress=False)
    assert distributed.device_count(config.from_dict({**base, "devices": 0})) == 1  # this process: 1 CPU device
    assert distributed.make_mesh(config.from_dict({**base, "devices": 1})) is None
    assert distributed.device_count(config.from_dict({**base, "devices": 0}), available=8) == 6  # gcd(12, 6)
    assert distributed.device_count(config.from_dict({**base, "devices": 3}), available=8) == 3
    # TPU: never an odd count > 1 (no all-reduce over odd replica groups): gcd(50, 30) = 10 -> 2, not 5
    odd = config.from_dict({**base, "container_size": 50, "breed_size": 30, "k": 5})
    assert distributed.device_count(odd, available=8, platform="cpu") == 5
    assert distributed.device_count(odd, available=8, platform="tpu") == 2
    with pytest.raises(ConfigError, match="^devices: 5 is odd"):
        distributed.device_count(odd.replace(devices=5), available=8, platform="tpu")
    with pytest.raises(ConfigError, match="devices: 2 requested but only 1"):
        distributed.device_count(config.from_dict({**base, "devices": 2}))
    # a v5e / v6e slice runs a program on all its chips: the count must divide the chips too
    assert distributed.device_count(odd, available=64, platform="tpu") == 10
    assert distributed.device_count(odd, available=64, platform="tpu", whole=True) == 2
    vctk = odd.replace(container_size=500, breed_size=100)
    assert distributed.device_count(vctk, available=64, platform="tpu", whole=True) == 4
    assert distributed.device_count(vctk, available=32, platform="tpu", whole=True) == 4
    with pytest.raises(ConfigError, match="^devices: 10 must divide the slice's 64 chips"):
        distributed.device_count(odd.replace(devices=10), available=64, platform="tpu", whole=True)


class _Chip:
    def __init__(self, i, platform="tpu", kind="TPU v5 lite"):
        self.id, self.platform, self.device_kind = i, platform, kind


def test_a_v5e_slice_mesh_covers_every_chip():
    """On a v5e / v6e slice the mesh is ("pop", "rep") over every chip; elsewhere "pop" over a subset."""
    cfg = config.from_dict(dict(rave="toy", embedder="toy", container_size=50, breed_size=30, k=5, progress=False))
    chips = [_Chip(i) for i in range(64)]
    assert distributed.needs_whole_slice(chips) and not distributed.needs_whole_slice(chips[:1])
    assert not distributed.needs_whole_slice([_Chip(i, kind="TPU v5") for i in range(32)])  # v5p: any subset
    assert not distributed.needs_whole_slice([_Chip(i, "gpu", "NVIDIA H100 80GB HBM3") for i in range(8)])
    assert distributed.device_count(cfg, 64, "tpu", whole=True) == 2


MULTIHOST = textwrap.dedent("""
    import json, os, sys
    pid, out, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from lvns_jax import config, distributed, runner
    cfg = config.from_dict(json.loads(sys.argv[4]))
    s = runner.run(cfg, out)
    json.dump(dict(processes=jax.process_count(), devices=jax.device_count(), generation=int(s.generation),
                   shards=len(s.latents.sharding.device_set),
                   sparseness=distributed.to_host(s.sparseness).tolist()), open(os.path.join(out, f"p{pid}.json"), "w"))
""")


@pytest.mark.slow
def test_two_processes_multihost_run_then_resume_on_one(tmp_path):
    """2 processes x 2 CPU devices (jax.distributed + gloo): one run directory written by process 0,
    a 4-way sharded state, orbax checkpoints from both processes; resumed in this 1-device process it
    continues like an uninterrupted 1-device run."""
    import socket

    from lvns_jax import runner

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    base = dict(rave="toy", embedder="toy", container_size=16, breed_size=8, k=4, latent_channels=3, latent_frames=8,
                chunk_size=2, progress=False, scan_length=2, checkpoint_every=2, save_every=2, audio_every=2, seed=5)
    script = tmp_path / "mh.py"
    script.write_text(MULTIHOST)
    out = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cfg_mh = json.dumps(dict(base, generations=2, multihost=True, devices=0))
    procs = [subprocess.Popen([sys.executable, str(script), str(p), str(out), str(port), cfg_mh], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) for p in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    if any("gloo" in log.lower() and "not" in log.lower() and p.returncode for log, p in zip(logs, procs)):
        pytest.skip("no gloo CPU collectives in this jaxlib")
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    r0, r1 = (json.loads((out / f"p{p}.json").read_text()) for p in (0, 1))
    assert r0["processes"] == 2 and r0["devices"] == 4 and r0["shards"] == 4 and r0["generation"] == 2
    assert r0["sparseness"] == r1["sparseness"]
    # bookkeeping by process 0 only: one event file, one metrics line per generation
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert [json.loads(line)["generation"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    # resume here (1 process, 1 device) to generation 4 == uninterrupted 1-device run
    a = runner.run(runner.resume_config(str(out), {"generations": 4, "multihost": False, "devices": 1}), str(out),
                   resume=True)
    b = runner.run(config.from_dict(dict(base, generations=4, devices=1)), str(tmp_path / "ref"))
    np.testing.assert_array_equal(np.asarray(a.born), np.asarray(b.born))
    np.testing.assert_allclose(np.asarray(a.latents), np.asarray(b.latents), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.sparseness), np.asarray(b.sparseness), rtol=1e-5)
