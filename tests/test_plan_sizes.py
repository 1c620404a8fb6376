"""``lvns plan`` of real-size programs for a TPU topology (slow: each compiles the real-size step for
XLA:TPU on this CPU, minutes on 2 cores; needs libtpu, skipped without it), and the population mesh
on a TPU slice's chips (no compile: cheap).

* the embedded default configuration (untrained RAVE v1 + untrained VGGish, 50/30/30) compiles for
  ``v5e:2x2`` as ``lvns run`` would build it for those chips: the float32 VGGish front end (XLA:TPU has
  no float64 FFT), an even device count, no float64 op, no host callback, within a chip's HBM, and
  the model parameters are not among the step's outputs;
* a 1,024 / 256 search with the incremental kNN compiles for ``v5e:2x2`` with its population split
  over all 4 chips: the same checks.
"""

from __future__ import annotations

import pytest

from lvns_jax import plan
from lvns_jax import config as config_lib

pytestmark = pytest.mark.skipif(not plan.libtpu_available(),
                                reason="libtpu not installed (pip install -e '.[tpu]'): no TPU compiler")

V5E_HBM = 16 * 2**30


def _check_compiles_clean(res, mesh_devices):
    assert res["ok"], res["error"]
    assert res["device_kind"] == "TPU v5 lite" and res["topology_devices"] == 4
    assert res["mesh_devices"] == mesh_devices
    h = res["hlo"]
    assert not h["f64_ops"], h["f64_ops"]
    assert not h["host_callbacks"] and h["host_transfers"] == 0
    mem = res["memory"]
    assert res["hbm_per_device_bytes"] == V5E_HBM
    assert 0 < mem["peak_estimate_bytes"] < V5E_HBM
    # the step returns the state and metrics, not the ~340 MB of replicated model parameters
    assert mem["output_bytes"] < mem["argument_bytes"] / 10
    assert res["cost"]["flops"] > 0


def test_the_mesh_of_a_v5e_slice_covers_every_chip_and_a_v5p_subset_is_kept():
    """XLA:TPU compiles a v5e / v6e program only for all chips of the slice (a RET_CHECK for 10 of
    v5e:8x8's 64 chips): 50/30 on v5e:8x8 is split in 2 parts with 32 copies each."""
    from lvns_jax import distributed

    cfg = config_lib.load(None, ["rave=toy", "embedder=toy", "container_size=50", "breed_size=30", "k=5"])
    v5e = plan.topology_devices("v5e:8x8")
    mesh = distributed.make_mesh(cfg, v5e)
    assert dict(mesh.shape) == {"pop": 2, "rep": 32} and mesh.size == 64 and distributed.shards(mesh) == 2
    assert set(mesh.devices.flat) == set(v5e)
    mesh = distributed.make_mesh(cfg.replace(container_size=64, breed_size=32), v5e)
    assert dict(mesh.shape) == {"pop": 32, "rep": 2}
    v5p = plan.topology_devices("v5p:2x4x4")
    mesh = distributed.make_mesh(cfg, v5p)  # full ICI routing: 10 of the 32 chips
    assert dict(mesh.shape) == {"pop": 10} and distributed.shards(mesh) == 10


@pytest.mark.slow
def test_default_config_compiles_for_v5e_2x2():
    cfg = config_lib.load(None, [])
    assert (cfg.container_size, cfg.breed_size) == (50, 30) and cfg.devices == 0
    res = plan.plan(cfg, "v5e:2x2")
    _check_compiles_clean(res, mesh_devices=2)  # 50 and 30 share 2 (and 5, 10): the even count <= 4
    assert "UNTRAINED" in str(res["models"])


@pytest.mark.slow
def test_incremental_1024_256_compiles_for_v5e_2x2():
    cfg = config_lib.load(None, ["container_size=1024", "breed_size=256", "knn=incremental"])
    res = plan.plan(cfg, "v5e:2x2")
    _check_compiles_clean(res, mesh_devices=4)
    assert res["hlo"]["collectives_total"] > 0  # really partitioned


def test_collective_bytes_of_a_hand_written_module():
    """Result sizes of synchronous collectives and of async ``-done`` halves (not ``-start``: its tuple
    holds the operand too), split into what lies in a while body."""
    text = """HloModule m
%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ar = f32[8]{0} all-reduce(f32[8]{0} %x), replica_groups={{0,1}}, to_apply=%add
}
ENTRY %main (a: f32[4,2]) -> f32[16,2] {
  %ags = (f32[4,2]{1,0}, f32[16,2]{1,0}) all-gather-start(f32[4,2]{1,0} %a), dimensions={0}
  %agd = f32[16,2]{1,0} all-gather-done((f32[4,2]{1,0}, f32[16,2]{1,0}) %ags)
  %cp = (bf16[3]{0}, s32[]) collective-permute(bf16[3]{0} %b), source_target_pairs={{0,1}}
  %w = (s32[], f32[8]) while((s32[], f32[8]) %t), condition=%cond.1, body=%body.1
}
"""
    cb = plan.collective_bytes(text)
    assert cb["by_kind"] == {"all-reduce": 32, "all-gather": 128, "collective-permute": 10}
    assert cb["total"] == 170 and cb["in_loop_bodies"] == 32
