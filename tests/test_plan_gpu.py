"""``lvns plan --topology h100:N``: ahead-of-time compilation for NVIDIA GPUs (lvns_jax.plan).

The compile tests need JAX's CUDA plugin, which lives in its own venv (``python3 -m venv .venv-cuda
&& .venv-cuda/bin/pip install -e '.[cuda]'``; no GPU needed) and are skipped without it (the default
venv): run them with ``.venv-cuda/bin/pytest tests/test_plan_gpu.py``. The rest (topology names,
the missing-plugin message, the spec files, the custom-call cost) runs everywhere.
"""

from __future__ import annotations

import pytest

from lvns_jax import cli, plan
from lvns_jax import config as config_lib

TOY = ["rave=toy", "embedder=toy", "container_size=64", "breed_size=32", "k=5"]

needs_cuda = pytest.mark.skipif(not plan.cuda_plugin_available(),
                                reason="JAX's CUDA plugin not installed (its own venv: pip install -e '.[cuda]'): "
                                       "no GPU compiler in this interpreter")


def test_gpu_topology_names():
    assert plan.gpu_topology("h100:8") == ("h100", 8) and plan.gpu_topology("H200:1") == ("h200", 1)
    assert plan.gpu_topology("v5e:2x4") is None and plan.gpu_topology("v4:2x2x1") is None
    with pytest.raises(plan.PlanError, match="expected h100:N"):
        plan.gpu_topology("h100:0")
    with pytest.raises(plan.PlanError, match="expected h100:N"):
        plan.gpu_topology("h100")


def test_plan_without_cuda_plugin_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(plan, "cuda_plugin_available", lambda: False)
    assert cli.main(["plan", *TOY, "--topology", "h100:8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CUDA plugin" in err and ".[cuda]" in err and "separate venv" in err
    with pytest.raises(plan.PlanError, match=r"\.\[cuda\]"):
        plan.topology_devices("h100:8")


def test_gpu_specs_are_packaged_and_their_peaks_known():
    for name in plan.GPU_SPECS:
        text = plan.gpu_target_config(name)
        assert "openxla/xla" in text and 'platform_name: "CUDA"' in text
        kind = text.rsplit('device_description_str: "', 1)[1].split('"')[0]
        assert kind in plan.PEAKS and plan.hbm_of(kind) == plan.PEAKS[kind]["hbm"], kind
    stripped = plan.drop_fields(plan.gpu_target_config("h100"), plan.NEWER_SPEC_FIELDS)
    assert "collective_memory_granularity" not in stripped and "core_count: 132" in stripped
    assert stripped.count("{") == stripped.count("}")
    assert plan.drop_fields("a {\n  b: 1\n  c {\n    d: 2\n  }\n}\ne: 3\n", ("c",)) == "a {\n  b: 1\n}\ne: 3\n"


def test_custom_call_cost_counts_convolutions_and_gemms():
    text = "\n".join([
        "  %x = f32[30,64,1024]{2,1,0} parameter(0)",
        "  %w = f32[128,7,64]{2,1,0} parameter(1)",
        "  %c = (f32[30,1024,128]{2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=7 pad=3_3}, "
        'dim_labels=bf0_o0i->b0f, custom_call_target="__cudnn$convForward"',
        "  %a = f32[16,32]{1,0} parameter(2)",
        "  %b = f32[32,8]{1,0} parameter(3)",
        '  %g = (f32[16,8]{1,0}, s8[4]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", '
        'backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],'
        '"rhs_contracting_dimensions":["0"]}}}',
        '  ROOT %z = () custom-call(%a), custom_call_target="something_else"',
    ])
    c = plan.custom_call_cost(text)
    conv = 2 * (30 * 1024 * 128) * 7 * 64  # output elements x (kernel taps x input features)
    assert c["flops"] == conv + 2 * 16 * 8 * 32
    assert c["custom_calls"] == 3 and c["uncounted"] == {"something_else": 1}
    assert c["bytes_accessed"] == 4 * (30 * 1024 * 128 + 30 * 64 * 1024 + 128 * 7 * 64) + 4 * (16 * 8 + 1 + 16 * 32 + 32 * 8)


@needs_cuda
@pytest.mark.parametrize("topology,mesh", [("h100:1", 1), ("h100:8", 8)])
def test_toy_plan_for_h100(topology, mesh, tmp_path, capsys):
    res = plan.plan(config_lib.load(None, TOY), topology)
    assert res["ok"], res["error"]
    assert (res["device_kind"], res["topology_devices"], res["mesh_devices"]) == ("NVIDIA H100 80GB HBM3", mesh, mesh)
    assert res["hbm_per_device_bytes"] == 80 * 10**9 and res["cuda_plugin"]
    mem = res["memory"]
    assert mem["argument_bytes"] > 0 and mem["temp_bytes"] > 0 and mem["peak_estimate_bytes"] < 2**30
    assert res["cost"]["flops"] > 0 and res["cost"]["source"].startswith("HloCostAnalysis")
    h = res["hlo"]
    assert not h["f64_ops"] and not h["host_callbacks"] and h["host_transfers"] == 0
    assert (h["collectives_total"] > 0) == (mesh > 1)
    r = res["roofline"]
    assert r["chip"] == "H100 SXM" and r["peak_flops_per_s"] == 67e12 and r["seconds_per_generation"] > 0
    out = tmp_path / "plan.json"
    assert cli.main(["plan", *TOY, "--topology", topology, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"population over {mesh} of {mesh} devices" in text and "roofline (H100 SXM" in text and out.exists()


@needs_cuda
def test_gpu_takes_an_odd_device_count():
    """The odd-count rule is XLA:TPU's: 50/30 on 8 GPUs splits over 5 and compiles."""
    res = plan.plan(config_lib.load(None, TOY + ["container_size=50", "breed_size=30"]), "h100:8")
    assert res["ok"], res["error"]
    assert res["mesh_devices"] == 5


@needs_cuda
def test_vggish_keeps_its_float64_front_end_on_gpu():
    """frontend_precision = auto keeps the float64 FFT island for GPUs (XLA:GPU has a float64 FFT)."""
    from lvns_jax import embedders

    devices = plan.topology_devices("h100:1")
    assert devices[0].platform == "gpu" and embedders.frontend_float64(config_lib.load(None, TOY), "gpu")
    res = plan.plan(config_lib.load(None, ["rave=toy", "embedder=untrained:vggish", "container_size=4", "latent_frames=256",
                                           "breed_size=2", "k=2"]), "h100:1")
    assert res["ok"], res["error"]
    assert res["hlo"]["f64_ops"] and "fft" in res["hlo"]["f64_ops"]


@needs_cuda
def test_large_sort_compiles_without_a_gpu():
    """XLA:GPU's CUB radix sort (a sort or top-k over ~1e5 rows: the 100k container's selection) asks
    the CUDA runtime at compile time; plan.compile_options turns it off for compile-only devices."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    dev = plan.topology_devices("h100:1")[0]
    x = jax.ShapeDtypeStruct((112640,), jnp.float32, sharding=SingleDeviceSharding(dev))
    assert plan.compile_options(dev) == {"xla_gpu_enable_cub_radix_sort": False}
    compiled = jax.jit(lambda a: jax.lax.top_k(a, 10240)).lower(x).compile(plan.compile_options(dev))
    assert compiled.memory_analysis().argument_size_in_bytes == 4 * 112640
