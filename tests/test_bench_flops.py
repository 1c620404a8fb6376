"""`lvns bench`'s flop accounting: XLA counts a loop body once, the chunked stages are scaled by the chunk count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from lvns_jax import bench, config as config_lib


def test_xla_counts_a_lax_map_body_once():
    """The reason for bench's per-chunk accounting (if XLA ever counts trip counts, this fails and
    bench.measure must stop multiplying)."""
    w = jnp.ones((64, 64))
    one = bench.flops_of(lambda a: a @ w, jnp.ones((8, 64)))
    mapped = bench.flops_of(lambda x: jax.lax.map(lambda a: a @ w, x), jnp.ones((4, 8, 64)))
    assert one == pytest.approx(2 * 8 * 64 * 64, rel=0.01)
    assert mapped == pytest.approx(one, rel=0.01)


def test_chunk_plan_matches_map_individuals():
    assert bench.chunk_plan(100, 32) == (1, 4, 25)  # balanced chunks: 4 x 25, not 32+32+32+4
    assert bench.chunk_plan(100, 100) == (1, 1, 100)
    assert bench.chunk_plan(7, 3) == (1, 3, 3)  # 9 slots, 2 padded


def _measure(chunk_size):
    cfg = config_lib.from_dict(dict(rave="toy", embedder="toy", container_size=12, breed_size=6, k=4,
                                    latent_channels=4, latent_frames=8, chunk_size=chunk_size, progress=False))
    return bench.measure(cfg, repeats=1)


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_stage_flops_do_not_depend_on_the_chunking():
    """Decode/embed work per generation is the same in 1, 2 or 3 chunks (exact division, no padding),
    up to the few per-call flops (key arithmetic, reshapes) that do not scale with the batch."""
    runs = {c: _measure(c) for c in (6, 3, 2)}
    for stage in ("decode", "embed"):
        f = {c: r["stages"][stage]["gflop"] for c, r in runs.items()}
        assert f[6] > 0 and f[3] == pytest.approx(f[6], rel=0.02) and f[2] == pytest.approx(f[6], rel=0.02), (stage, f)
    r = runs[3]
    assert r["chunks"] == {"devices": 1, "chunks_per_device": 2, "chunk": 3}
    st = r["stages"]
    assert st["step"]["gflop"] == pytest.approx(sum(st[s]["gflop"] for s in bench.STAGES[:-1]))
    for s in bench.STAGES:
        assert st[s]["gflops_per_s"] == pytest.approx(st[s]["gflop"] / st[s]["seconds"])
        assert st[s]["cpu_s"] >= 0
    text = bench.table([{**r, "name": "x"}])
    assert "GFLOP/s" in text and "GFLOP/generation" in text
