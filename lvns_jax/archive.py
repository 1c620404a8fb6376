"""Novelty archives (``archive`` config key): a bounded memory of novel individuals (Lehman & Stanley).

Children enter the archive after they are scored; sparseness is measured against container +
children + archive (:mod:`lvns_jax.scoring`), so the search is pushed away from what it has
already found even after it left the container.

* ``none``: no archive (the paper);
* ``threshold``: children whose sparseness exceeds the threshold enter. The threshold is
  ``archive_threshold``, or (0) the median sparseness of the initial container; with
  ``archive_rate`` > 0 it adapts to keep about ``archive_rate * breed_size`` insertions per
  generation: x 1.2 after a generation with more, x 0.95 after one with fewer (the rule of
  Lehman & Stanley 2011, per generation);
* ``random``: each valid child enters with probability ``archive_rate`` (a control).

The archive holds at most ``archive_size`` members; when full, the oldest are overwritten (a ring).
At most ``archive_size`` members enter per generation (the most sparse first). Members keep their
identity ``(born, slot)`` and latents, so their sound can be decoded and a child is never its own
neighbour through its archive copy. Rows are split over devices like the container.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from lvns_jax import individuals, plugins


@struct.dataclass
class ArchiveState:
    latents: jax.Array  # (A, C, T)
    embeddings: jax.Array  # (A, D); rows beyond `size` are unused (NaN)
    sparseness: jax.Array  # (A,) sparseness when it entered
    born: jax.Array  # (A,) int32 identity: generation of birth (-1: empty row)
    slot: jax.Array  # (A,) int32 identity: slot among its generation's children (-1: empty row)
    size: jax.Array  # int32 scalar: members held (<= A)
    next: jax.Array  # int32 scalar: ring position of the next insertion
    threshold: jax.Array  # float32 scalar
    inserted_total: jax.Array  # int32 scalar

    def valid(self) -> jax.Array:
        return self.born >= 0


def empty(capacity: int, channels: int, frames: int, dim: int, threshold) -> ArchiveState:
    return ArchiveState(
        latents=jnp.zeros((capacity, channels, frames), jnp.float32),
        embeddings=jnp.full((capacity, dim), jnp.nan, jnp.float32),
        sparseness=jnp.full((capacity,), jnp.nan, jnp.float32),
        born=jnp.full((capacity,), -1, jnp.int32), slot=jnp.full((capacity,), -1, jnp.int32),
        size=jnp.int32(0), next=jnp.int32(0), threshold=jnp.asarray(threshold, jnp.float32),
        inserted_total=jnp.int32(0))


def insert(state: ArchiveState, enter: jax.Array, priority: jax.Array, latents, embeddings, sparseness,
           born, slot) -> tuple[ArchiveState, jax.Array]:
    """Put the rows with ``enter`` into the ring, highest ``priority`` first, at most A of them."""
    a = state.born.shape[0]
    order = jnp.argsort(jnp.where(enter, -priority, jnp.inf), stable=True)  # entering rows first
    count = jnp.minimum(jnp.sum(enter, dtype=jnp.int32), a)
    rank = jnp.arange(order.shape[0], dtype=jnp.int32)
    pos = jnp.where(rank < count, (state.next + rank) % a, a)  # a = dropped
    def put(dst, src):
        return dst.at[pos].set(src[order], mode="drop")
    new = state.replace(
        latents=put(state.latents, latents), embeddings=put(state.embeddings, embeddings),
        sparseness=put(state.sparseness, sparseness), born=put(state.born, born), slot=put(state.slot, slot),
        size=jnp.minimum(state.size + count, a), next=(state.next + count) % a,
        inserted_total=state.inserted_total + count)
    return new, count


@dataclasses.dataclass(frozen=True)
class NoArchive:
    def init(self, channels, frames, dim, initial_sparseness):
        return None

    def add(self, state, children, child_emb, child_sp, child_ok, child_keys, born, slots):
        return None, {}


@dataclasses.dataclass(frozen=True)
class ThresholdArchive:
    capacity: int
    threshold: float = 0.0  # 0: the median sparseness of the initial container
    rate: float = 0.0  # target insertions per generation as a share of breed_size; 0: fixed threshold
    breed_size: int = 1

    def init(self, channels, frames, dim, initial_sparseness):
        thr = self.threshold if self.threshold > 0 else jnp.nanmedian(
            jnp.where(jnp.isfinite(initial_sparseness), initial_sparseness, jnp.nan))
        return empty(self.capacity, channels, frames, dim, thr)

    def add(self, state, children, child_emb, child_sp, child_ok, child_keys, born, slots):
        enter = child_ok & (child_sp > state.threshold)
        new, count = insert(state, enter, child_sp, children, child_emb, child_sp, born, slots)
        if self.rate > 0:
            target = self.rate * self.breed_size
            factor = jnp.where(count > target, 1.2, jnp.where(count < target, 0.95, 1.0))
            new = new.replace(threshold=(state.threshold * factor).astype(jnp.float32))
        return new, _metrics(new, count)


@dataclasses.dataclass(frozen=True)
class RandomArchive:
    capacity: int
    rate: float = 0.1  # probability that a valid child enters

    def init(self, channels, frames, dim, initial_sparseness):
        return empty(self.capacity, channels, frames, dim, 0.0)

    def add(self, state, children, child_emb, child_sp, child_ok, child_keys, born, slots):
        keys = individuals.stream(child_keys, individuals.ARCHIVE)
        u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
        enter = child_ok & (u < self.rate)
        new, count = insert(state, enter, -u, children, child_emb, child_sp, born, slots)
        return new, _metrics(new, count)


def _metrics(state: ArchiveState, count) -> dict:
    return {"archive_size": state.size, "archive_insertions": count, "archive_threshold": state.threshold}


@plugins.register("archive", "none")
def build_none(cfg):
    return NoArchive()


@plugins.register("archive", "threshold")
def build_threshold(cfg):
    return ThresholdArchive(capacity=cfg.archive_size, threshold=cfg.archive_threshold, rate=cfg.archive_rate,
                            breed_size=cfg.breed_size)


@plugins.register("archive", "random")
def build_random(cfg):
    return RandomArchive(capacity=cfg.archive_size, rate=cfg.archive_rate or 0.1)
