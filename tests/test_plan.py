"""``lvns plan``: ahead-of-time compilation for a TPU topology (lvns_jax.plan).

The compile tests need libtpu (``pip install -e '.[tpu]'``; the test extra has it) and are
skipped without it; the rest (argument parsing, the missing-libtpu message, the abstract
arguments, the HLO scan) runs everywhere.
"""

from __future__ import annotations

import jax
import pytest

from lvns_jax import cli, plan
from lvns_jax import config as config_lib
from lvns_jax.assemble import assemble

TOY = ["rave=toy", "embedder=toy", "container_size=64", "breed_size=32", "k=5"]

needs_libtpu = pytest.mark.skipif(not plan.libtpu_available(),
                                  reason="libtpu not installed (pip install -e '.[tpu]'): no TPU compiler")


def test_plan_arguments():
    args = cli.build_parser().parse_args(["plan", "cfg.toml", "k=5", "--topology", "v5e:2x4,v5e:2x2",
                                          "--block", "3", "--json", "out.json"])
    assert args.func is cli._cmd_plan
    assert args.items == ["cfg.toml", "k=5"]
    assert (args.topology, args.block, args.json) == ("v5e:2x4,v5e:2x2", 3, "out.json")
    with pytest.raises(SystemExit):  # --topology is required
        cli.build_parser().parse_args(["plan", "k=5"])


def test_plan_without_libtpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(plan, "libtpu_available", lambda: False)
    assert cli.main(["plan", *TOY, "--topology", "v5e:2x4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs libtpu" in err and ".[tpu]" in err
    with pytest.raises(plan.PlanError, match="needs libtpu"):
        plan.topology_devices("v5e:2x4")


def test_abstract_args_match_the_template():
    """The abstract state has the template's shapes and dtypes (plus the scorer's derived data) and
    no array is materialised."""
    search = assemble(config_lib.load(None, TOY + ["knn=incremental", "archive=threshold", "archive_size=64"]))
    abs_search, abs_state = plan.abstract_args(search)
    leaves = jax.tree_util.tree_leaves((abs_search, abs_state))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    want = search.attach(search.template())  # small: the toy state, materialised on the CPU
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.sharding.is_fully_replicated), abs_state)
    assert got == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.sharding.is_fully_replicated), want)


def test_scan_hlo_counts_and_warns():
    text = "\n".join([
        "  %a = f64[4]{0} convert(f32[4]{0} %p)",
        "  %b = f32[8,16]{1,0:T(8,128)} all-gather(f32[1,16]{1,0} %x), dimensions={0}",
        "  %c = (f32[8]{0}, /*index=1*/s32[8]{0}) all-reduce-start(f32[8]{0} %y), to_apply=%add",
        "  %d = (f32[8]{0}, s32[8]{0}) sort(f32[8]{0} %y, s32[8]{0} %i), dimensions={0}, to_apply=%lt",
        '  %e = () custom-call(), custom_call_target="xla_python_cpu_callback"',
        "  %s = (pred[], u32[], token[]) send(pred[] %q, token[] %t), channel_id=1, is_host_transfer=true",
        "  %sd = token[] send-done((pred[], u32[], token[]) %s), channel_id=1, is_host_transfer=true",
        "  ROOT %f = f32[] add(f32[] %u, f32[] %v)",
    ])
    h = plan.scan_hlo(text)
    assert h["f64_ops"] == {"convert": 1}
    assert h["collectives"] == {"all-gather": 1, "all-reduce": 1} and h["collectives_total"] == 2
    assert h["sorts"] == 1 and h["instructions"] == 8
    assert h["host_callbacks"] == {"xla_python_cpu_callback": 1} and h["host_transfers"] == 1
    assert len(h["warnings"]) == 3


def test_fft_failure_is_one_line():
    msg = plan._failure(RuntimeError("INTERNAL: during compile\nUnexpected operand type for FFT: f64\n..."))
    assert msg.startswith("does not compile for TPU: float64 FFT in the VGGish front end") and "\n" not in msg
    assert plan._failure(ValueError("boom\nmore")) == "does not compile for TPU: boom"
    odd = plan._failure(RuntimeError("UNIMPLEMENTED: Encountered AllReduce fusion with 5 sized replica_groups, "
                                     "which is odd and greater than one."), 5, [2])
    assert "split over 5 devices" in odd and "devices=2" in odd


@needs_libtpu
def test_toy_plan_for_v5e_2x4(tmp_path, capsys):
    cfg = config_lib.load(None, TOY)
    devices = plan.topology_devices("v5e:2x4")
    _, state = plan.abstract_args(assemble(cfg, devices=devices), devices)
    assert state.latents.sharding.spec == jax.sharding.PartitionSpec("pop")  # split like a run's
    assert state.key.sharding.is_fully_replicated and state.latents.sharding.mesh.size == 8
    res = plan.plan(cfg, "v5e:2x4")
    assert res["ok"], res["error"]
    assert (res["device_kind"], res["topology_devices"], res["mesh_devices"]) == ("TPU v5 lite", 8, 8)
    mem = res["memory"]
    assert mem["argument_bytes"] > 0 and mem["temp_bytes"] > 0 and mem["peak_estimate_bytes"] < 2**30
    assert res["cost"]["flops"] > 0
    h = res["hlo"]
    assert not h["f64_ops"] and not h["host_callbacks"] and h["host_transfers"] == 0
    assert h["collectives"].get("all-gather", 0) > 0  # the kNN's all-gather of the pool embeddings
    # the CLI on the same config: a table and a JSON file
    out = tmp_path / "plan.json"
    assert cli.main(["plan", *TOY, "--topology", "v5e:2x4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "population over 8 of 8 devices" in text and "peak (estimate)" in text
    assert out.exists()


def test_stop_check_needs_a_block():
    with pytest.raises(plan.PlanError, match="--stop-check needs --block"):
        plan.plan(config_lib.load(None, TOY), "v5e:2x4", stop_check=True)


@needs_libtpu
@pytest.mark.slow
def test_toy_block_with_stop_check_shows_the_host_callback():
    res = plan.plan(config_lib.load(None, TOY), "v5e:2x2", block=2, stop_check=True)
    assert res["ok"], res["error"]
    assert res["function"] == "run_block(2, stop check)" and res["mesh_devices"] == 4
    assert res["hlo"]["host_transfers"] > 0 and res["hlo"]["while_loops"] >= 1
    assert any("host callbacks" in w for w in res["warnings"])


@needs_libtpu
@pytest.mark.slow
def test_unknown_topology_is_one_line():
    with pytest.raises(plan.PlanError, match="--topology 'v5e:3x7'"):
        plan.topology_devices("v5e:3x7")


# ----------------------------------------------------------------------------- roofline, chunk_size auto
def test_peak_flops_by_precision():
    bf16 = plan.PEAKS["TPU v5 lite"]["bf16"]
    assert plan.peak_flops("TPU v5 lite", "bfloat16")[0] == bf16 == 197e12
    assert plan.peak_flops("TPU v5 lite", "default")[0] == bf16
    f32, note = plan.peak_flops("TPU v5 lite", "float32")
    assert f32 == bf16 / 6 and "bf16x6" in note
    assert plan.peak_flops("NVIDIA H100 80GB HBM3", "float32")[0] == 67e12
    assert plan.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert plan.peak_flops("TPU v9000", "float32") is None
    for kind, p in plan.PEAKS.items():
        assert p["bf16"] > 0 and p["hbm_bw"] > 0 and p["hbm"] > 0, kind


def test_roofline_takes_the_slower_bound():
    # 197e12 / 6 FLOP/s and 819e9 B/s: 1e12 flops = 30.5 ms; 819e6 bytes = 1 ms -> compute bound
    r = plan.roofline(1e12, 819e6, "TPU v5 lite", "float32", 100)
    assert r["bound"] == "compute" and r["seconds_per_generation"] == pytest.approx(6 / 197)
    assert r["memory_s"] == pytest.approx(1e-3) and r["individuals_per_s"] == pytest.approx(100 * 197 / 6)
    r = plan.roofline(1e9, 819e9, "TPU v5 lite", "bfloat16", 10)
    assert r["bound"] == "memory" and r["seconds_per_generation"] == pytest.approx(1.0)
    assert plan.roofline(1e9, 1e9, "CPU", "float32", 10) is None


def test_per_generation_multiplies_the_chunk_loop_back_in():
    cfg = config_lib.load(None, TOY + ["chunk_size=3"])  # B=32 over 4 devices: 8 each, 3 chunks of 3
    maps = plan.chunk_maps(cfg, 4)
    assert maps == [{"map": "children", "individuals": 8, "chunks": 3, "chunk": 3}]
    maps[0].update(flops=10.0, bytes_accessed=100.0)
    assert plan.per_generation({"flops": 50.0, "bytes_accessed": 500.0}, maps) == {"flops": 70.0,
                                                                                  "bytes_accessed": 700.0}
    again = plan.chunk_maps(config_lib.load(None, TOY + ["reevaluate_container=true"]), 8)
    assert [(m["map"], m["individuals"], m["chunks"]) for m in again] == [("children", 4, 1), ("container", 8, 1)]
    assert plan.per_generation({"flops": 5.0, "bytes_accessed": 6.0}, again) == {"flops": 5.0, "bytes_accessed": 6.0}
    assert plan.per_generation(None, maps) is None


def test_chunk_candidates_and_bytes():
    cfg = config_lib.load(None, TOY)
    assert plan.chunk_candidates(cfg, 1) == [32, 16, 8, 4, 2, 1]
    assert plan.chunk_candidates(cfg.replace(breed_size=30), 2) == [15, 8, 4, 2, 1]
    assert plan.chunk_candidates(cfg.replace(reevaluate_container=True), 8) == [8, 4, 2, 1]
    assert plan.parse_bytes("16GiB") == 16 * 2**30 and plan.parse_bytes("80GB") == 80 * 10**9
    assert plan.parse_bytes("1.5MiB") == 3 * 2**19 and plan.parse_bytes("4096") == 4096
    with pytest.raises(plan.PlanError, match="--hbm-limit"):
        plan.parse_bytes("lots")


def test_auto_chunk_takes_the_largest_that_fits(monkeypatch):
    """The choice logic on fake compiles: peak = 1 MiB + 1 KiB per individual in a chunk."""
    import lvns_jax.assemble as assemble_mod

    class Dev:
        device_kind = "TPU v5 lite"

    class FakeSearch:
        mesh = None

        def replace(self, **kw):
            return self

    monkeypatch.setattr(plan, "topology_devices", lambda topo: [Dev()])
    monkeypatch.setattr(assemble_mod, "assemble", lambda cfg, devices=None: FakeSearch())
    seen = []

    def fake_plan(cfg, topology, block=0, stop_check=False, search=None, hbm_bytes=None):
        seen.append(cfg.chunk_size)
        return {"ok": True, "memory": {"peak_estimate_bytes": 2**20 + 2**10 * cfg.chunk_size}, "warnings": []}

    monkeypatch.setattr(plan, "plan", fake_plan)
    cfg = config_lib.load(None, TOY)  # one device: 32 children
    res = plan.plan_auto_chunk(cfg, "v5e:2x4", hbm_bytes=2**20 + 10 * 2**10, margin=1.0)
    assert seen == [32, 16, 8] and res["chunk_auto"]["chosen"] == 8
    assert [t["fits"] for t in res["chunk_auto"]["tried"]] == [False, False, True]
    seen.clear()
    res = plan.plan_auto_chunk(cfg, "v5e:2x4", hbm_bytes=2**19)
    assert seen == [32, 16, 8, 4, 2, 1] and res["chunk_auto"]["chosen"] is None
    assert "no chunk_size fits" in res["warnings"][0]
    seen.clear()
    assert plan.plan_auto_chunk(cfg, "v5e:2x4")["chunk_auto"]["chosen"] == 32 and seen == [32]  # 16 GiB


def test_plan_chunk_size_arguments():
    args = cli.build_parser().parse_args(["plan", "k=5", "--topology", "v5e:2x4", "--chunk-size", "auto",
                                          "--hbm-limit", "1GiB", "--margin", "0.5"])
    assert (args.chunk_size, args.hbm_limit, args.margin) == ("auto", "1GiB", 0.5)


@needs_libtpu
@pytest.mark.slow
def test_toy_roofline_counts_the_chunk_loop():
    """chunk_size=1 (a 4-trip lax.map per device, its body counted once by XLA) and chunk_size=4 (no
    loop) give the same per-generation flops within 2% once the loop is multiplied back in."""
    one = plan.plan(config_lib.load(None, TOY + ["chunk_size=1"]), "v5e:2x4")
    whole = plan.plan(config_lib.load(None, TOY + ["chunk_size=4"]), "v5e:2x4")
    assert one["ok"] and whole["ok"]
    assert one["per_generation"]["maps"][0]["chunks"] == 4 and whole["per_generation"]["maps"][0]["chunks"] == 1
    assert one["cost"]["flops"] < 0.5 * whole["cost"]["flops"]  # XLA: the loop body once
    assert one["per_generation"]["flops"] == pytest.approx(whole["per_generation"]["flops"], rel=0.02)
    assert whole["per_generation"]["flops"] == whole["cost"]["flops"]
    r = one["roofline"]
    assert r["chip"] == "TPU v5e" and r["peak_flops_per_s"] == pytest.approx(197e12 / 6)
    assert r["seconds_per_generation"] > 0 and r["individuals_per_s"] == pytest.approx(32 / r["seconds_per_generation"])
    assert "roofline (TPU v5e" in plan.table(one)


@needs_libtpu
@pytest.mark.slow
def test_toy_auto_chunk_compiles_once_when_the_largest_fits(capsys):
    assert cli.main(["plan", *TOY, "--topology", "v5e:2x4", "--chunk-size", "auto"]) == 0
    text = capsys.readouterr().out
    assert "chunk_size auto (limit 90% of 16.00 GiB): 4 (tried 4:" in text


def test_sub_host_bounds():
    assert plan._sub_host_bounds("v5e:1x1") == (1, 1, 1) and plan._sub_host_bounds("v5e:1x2") == (1, 2, 1)
    assert plan._sub_host_bounds("v4:1x1x1") == (1, 1, 1) and plan._sub_host_bounds("v5e") is None
    assert plan._sub_host_bounds("v5e:3x7") is None and plan._sub_host_bounds("v4:1x1x2") is None


@needs_libtpu
@pytest.mark.slow
def test_toy_plan_for_a_single_chip():
    """v5e:1x1 (smaller than the default 2x2x1 host: compiled with chips_per_host_bounds 1x1x1): no
    mesh, no collective, and the 4-chunk loop counted back in."""
    res = plan.plan(config_lib.load(None, TOY + ["chunk_size=8"]), "v5e:1x1")
    assert res["ok"], res["error"]
    assert (res["topology_devices"], res["mesh_devices"]) == (1, 1) and res["hlo"]["collectives_total"] == 0
    m = res["per_generation"]["maps"][0]
    assert (m["chunks"], m["chunk"]) == (4, 8)
    assert res["per_generation"]["flops"] == pytest.approx(res["cost"]["flops"] + 3 * m["flops"])
