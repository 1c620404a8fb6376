"""Scorers: the kNN sparseness of every pool member (container + children), archive-aware.

A scorer (``knn`` config key) is a frozen dataclass with::

    initial(embeddings) -> (N,) sparseness of the initial container within itself
    derive(embeddings) -> derived state kept between generations (incremental lists; None for brute)
    score(derived, cont_emb, child_emb, archive, pool_ids, mesh) -> (pool sparseness (N+B,), aux)
    update(aux, pool_emb, survivors) -> derived state of the next container

Sparseness is measured against container + children + archive (pyribs #708): a member's k nearest
are the k best of its k nearest in the pool and its k nearest in the archive (never its own copy
in the archive, told by identity). Every distance is the exact, shape-independent one of
:func:`lvns_jax.novelty.exact_sq_dist`, so the result does not depend on block shapes, devices or
the scorer (brute and incremental agree to the last bit).

* ``brute``: all pool distances each generation (:mod:`lvns_jax.novelty`), rows split over devices;
* ``incremental``: stored neighbour lists, children vs pool only (:mod:`lvns_jax.knn_incremental`),
  children split over devices; ``nearest`` rule only, cached container embeddings only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lvns_jax import distributed, knn_incremental, novelty, plugins
from lvns_jax.errors import ConfigError


def initial_k(k: int, n: int, rule: str) -> int:
    """k for the initial container's sparseness within itself (at most N - 1 others, or N with self)."""
    return min(k, n - 1) if rule == "nearest" else min(k, n)


def archive_lists(pool_emb: jax.Array, pool_born: jax.Array, pool_slot: jax.Array, archive, k: int, rule: str,
                  chunk: int | None) -> jax.Array:
    """Each pool row's k neighbours in the archive (squared distances, sorted), never its own copy."""
    arch, arch_sq, ok = novelty.prepare(archive.embeddings, archive.valid())
    rows, _, _ = novelty.prepare(pool_emb)
    kk = min(k, arch.shape[0])
    screen = novelty.screen_matrix(arch, arch_sq, ok, rule)

    def block(r, ids):
        i = jnp.maximum(ids, 0)
        same = (pool_born[i][:, None] == archive.born[None, :]) & (pool_slot[i][:, None] == archive.slot[None, :])
        return novelty.block_knn(r, jnp.full(ids.shape, -1, jnp.int32), arch, arch_sq, ok, kk, rule,
                                 exclude=same, screen=screen)[0]

    c = chunk or novelty.auto_chunk(arch.shape[0])
    picked = novelty.rows_map(block, rows, jnp.arange(rows.shape[0], dtype=jnp.int32), c)
    if kk < k:
        pad = jnp.inf if rule == "nearest" else -jnp.inf
        picked = jnp.pad(picked, ((0, 0), (0, k - kk)), constant_values=pad)
    return picked


def _with_archive(lists: jax.Array, ok: jax.Array, pool_emb, pool_born, pool_slot, archive, k: int, rule: str,
                  chunk) -> jax.Array:
    if archive is not None:
        lists = novelty.merge_lists(lists, archive_lists(pool_emb, pool_born, pool_slot, archive, k, rule, chunk),
                                    k, rule)
    return jnp.where(ok, novelty.mean_sqrt(lists), -jnp.inf)


@dataclasses.dataclass(frozen=True)
class BruteForce:
    k: int
    rule: str = "nearest"
    chunk: int | None = None
    approx: float = 0.0

    def initial(self, embeddings: jax.Array) -> jax.Array:
        return novelty.sparseness(embeddings, initial_k(self.k, embeddings.shape[0], self.rule), self.rule, self.chunk)

    def derive(self, embeddings):
        return None

    def score(self, derived, cont_emb, child_emb, archive, pool_ids, mesh):
        lists, ok = distributed.pool_lists(mesh, cont_emb, child_emb, self.k, self.rule, self.chunk, self.approx)
        pool_emb = jnp.concatenate([cont_emb, child_emb])
        return _with_archive(lists, ok, pool_emb, *pool_ids, archive, self.k, self.rule, self.chunk), None

    def update(self, aux, pool_emb, survivors):
        return None


@dataclasses.dataclass(frozen=True)
class Incremental:
    k: int
    width: int
    chunk: int | None = None
    rule: str = "nearest"

    def initial(self, embeddings: jax.Array) -> jax.Array:
        return novelty.sparseness(embeddings, initial_k(self.k, embeddings.shape[0], self.rule), self.rule, self.chunk)

    def derive(self, embeddings):
        return knn_incremental.build(embeddings, self.width, self.chunk)

    def score(self, derived, cont_emb, child_emb, archive, pool_ids, mesh):
        pool_emb = jnp.concatenate([cont_emb, child_emb])
        n = cont_emb.shape[0]
        _, aux = knn_incremental.pool_knn(derived, pool_emb, n, self.k, self.chunk, mesh=mesh)
        ok = novelty.prepare(pool_emb)[2]
        return _with_archive(aux[0][:, :self.k], ok, pool_emb, *pool_ids, archive, self.k, self.rule, self.chunk), aux

    def update(self, aux, pool_emb, survivors):
        return knn_incremental.update(aux, pool_emb, survivors, self.k, self.chunk)


@plugins.register("scorer", "brute")
def build_brute(cfg):
    return BruteForce(k=cfg.k, rule=cfg.sparseness_rule, chunk=cfg.knn_chunk or None, approx=cfg.knn_approx)


@plugins.register("scorer", "incremental")
def build_incremental(cfg):
    if cfg.sparseness_rule != "nearest":
        raise ConfigError("sparseness_rule: knn = incremental keeps nearest-neighbour lists; it needs "
                          "sparseness_rule = nearest (use knn = brute for farthest)")
    if cfg.reevaluate_container:
        raise ConfigError("reevaluate_container: knn = incremental needs cached container embeddings "
                          "(reevaluate_container = false; use knn = brute to re-evaluate)")
    if cfg.knn_approx > 0:
        raise ConfigError("knn: knn_approx > 0 is a screen of the brute-force path; use knn = brute")
    return Incremental(k=cfg.k, width=cfg.knn_width or knn_incremental.default_width(cfg.k, cfg.container_size),
                       chunk=cfg.knn_chunk or None)
