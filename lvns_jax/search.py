"""The search: its plug-ins (:class:`Search`), its state, the one-jit generation step and its scan.

One generation (:func:`step`), all inside one ``jax.jit``, each stage a plug-in::

    emit      -> children latents from the container        (search.emitter,  lvns_jax/emitters/)
    evaluate  -> decode children to audio, embed the audio    (search.models,   lvns_jax.individuals)
    score     -> kNN sparseness of every pool member          (search.scorer,   lvns_jax.scoring)
    select    -> the next container                           (search.selector, lvns_jax.selection)
    archive   -> novel children kept in a bounded archive     (search.archive,  lvns_jax.archive)

``step(search, state) -> (state, metrics)`` is a pure function of the plug-ins and the state: the
plug-ins are static (their hyper-parameters), the model parameters are arguments of the jitted
function, the config is not in the state. :func:`lvns_jax.assemble.assemble` builds a
:class:`Search` from a :class:`~lvns_jax.config.Config`. The state's PRNG key is split every
generation for generation-level draws (parents, selection); an individual's own draws come from its
identity key (:mod:`lvns_jax.individuals`). A run is a pure function of the seed.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from lvns_jax import distributed, individuals
from lvns_jax.emitters import EmitContext, Evaluated
from lvns_jax.models import Models

#: Version of the checkpointed state layout (checkpoints of other versions are refused in one line).
STATE_FORMAT = 2


@struct.dataclass
class SearchState:
    key: jax.Array  # typed PRNG key, split once per generation (generation-level draws)
    id_key: jax.Array  # typed PRNG key: root of every individual's identity key
    generation: jax.Array  # int32 scalar: generations done
    latents: jax.Array  # (N, C, T) float32 container
    embeddings: jax.Array  # (N, D) float32, cached: each individual is embedded once, when born
    sparseness: jax.Array  # (N,) float32 sparseness of each member in the pool it survived
    born: jax.Array  # (N,) int32 identity: generation at which each member was made
    slot: jax.Array  # (N,) int32 identity: its index among that generation's children
    invalid_total: jax.Array  # int32 scalar: children with NaN/inf audio or embedding so far
    archive: Any = None  # lvns_jax.archive.ArchiveState, or None (checkpointed)
    knn: Any = None  # the scorer's derived data (incremental lists; rebuilt after a restore, not checkpointed)

    FIELDS = ("key", "id_key", "generation", "latents", "embeddings", "sparseness", "born", "slot", "invalid_total")
    SHARDED_FIELDS = ("latents", "embeddings", "sparseness", "born", "slot")

    def evolution_arrays(self) -> dict[str, Any]:
        """What a checkpoint holds."""
        out = {f: getattr(self, f) for f in self.FIELDS}
        if self.archive is not None:
            out["archive"] = self.archive
        return out

    def identity_keys(self) -> jax.Array:
        """(N,) identity keys of the container's members."""
        return individuals.individual_keys(self.id_key, self.born, self.slot)


@struct.dataclass
class Search:
    """The assembled plug-ins of a search (static) and the models' parameters (pytree leaves)."""

    models: Models
    emitter: Any = struct.field(pytree_node=False)
    scorer: Any = struct.field(pytree_node=False)
    selector: Any = struct.field(pytree_node=False)
    archive: Any = struct.field(pytree_node=False)
    initializer: Callable = struct.field(pytree_node=False)  # key -> (N, C, T) initial latents
    container_size: int = struct.field(pytree_node=False)
    breed_size: int = struct.field(pytree_node=False)
    chunk_size: int = struct.field(pytree_node=False)
    reevaluate_container: bool = struct.field(pytree_node=False, default=False)
    mesh: Any = struct.field(pytree_node=False, default=None)  # jax.sharding.Mesh over the population, or None
    seed: int = struct.field(pytree_node=False, default=0)

    # ------------------------------------------------------------------ host-side entry points
    def init(self, key: jax.Array | int | None = None) -> SearchState:
        return init(self, key)

    def step(self, state: SearchState):
        return step(self, state)

    def run_block(self, state: SearchState, length: int):
        return run_block(self, state, length)

    def template(self) -> SearchState:
        """A state of the right shapes and shardings (to restore a checkpoint into)."""
        return distributed.place(self._zeros(), self.mesh)

    def _zeros(self) -> SearchState:
        n = self.container_size
        c, t = self.latent_shape
        d = self.models.embedding_dim(t)
        sp = jnp.zeros((n,), jnp.float32)
        return SearchState(
            key=jax.random.key(0), id_key=jax.random.key(0), generation=jnp.int32(0),
            latents=jnp.zeros((n, c, t), jnp.float32), embeddings=jnp.zeros((n, d), jnp.float32), sparseness=sp,
            born=jnp.zeros((n,), jnp.int32), slot=jnp.zeros((n,), jnp.int32), invalid_total=jnp.int32(0),
            archive=self.archive.init(c, t, d, sp))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.initializer.channels, self.initializer.frames

    def attach(self, state: SearchState) -> SearchState:
        """``state`` with the scorer's derived data (after init or a restore), placed on the mesh."""
        if state.knn is None:
            state = state.replace(knn=jax.jit(self.scorer.derive)(state.embeddings))
        return distributed.place(state, self.mesh)

    def decode_members(self, id_key: jax.Array, latents, born, slot) -> jax.Array:
        """Audio of individuals given their latents and identities ``(born, slot)`` under the run's
        ``id_key``: the very sounds that were embedded (host code, chunked)."""
        return _decode_members(self, id_key, jnp.asarray(latents), jnp.asarray(born, jnp.int32),
                               jnp.asarray(slot, jnp.int32))


@jax.jit
def _decode_members(search: Search, id_key, latents, born, slot):
    keys = individuals.stream(individuals.individual_keys(id_key, born, slot), individuals.NOISE)
    return individuals.decode(search.models, latents, keys, search.chunk_size)


def init(search: Search, key: jax.Array | int | None = None) -> SearchState:
    """Initial state: container from the initializer, decoded and embedded once (identities (0, i)).

    ``key`` defaults to ``jax.random.key(search.seed)``.
    """
    if key is None:
        key = jax.random.key(search.seed)
    elif isinstance(key, int):
        key = jax.random.key(key)
    k_init, k_id, k_run = jax.random.split(key, 3)
    latents = search.initializer(k_init)
    n = search.container_size
    born, slot = jnp.zeros((n,), jnp.int32), jnp.arange(n, dtype=jnp.int32)
    models = distributed.place_models(search.models, search.mesh)
    embeddings, sp, archive = _initial_evaluation(search.replace(models=models), latents, k_id, born, slot)
    state = SearchState(key=k_run, id_key=k_id, generation=jnp.int32(0), latents=latents, embeddings=embeddings,
                        sparseness=sp, born=born, slot=slot, invalid_total=jnp.int32(0), archive=archive)
    return search.attach(state)


@jax.jit
def _initial_evaluation(search: Search, latents, id_key, born, slot):
    latents = distributed.split_rows(latents, search.mesh)
    keys = individuals.stream(individuals.individual_keys(id_key, born, slot), individuals.NOISE)
    emb, _ = individuals.evaluate(search.models, latents, keys, search.chunk_size, search.mesh)
    sp = search.scorer.initial(emb)
    c, t = latents.shape[1:]
    return emb, sp, search.archive.init(c, t, emb.shape[1], sp)


def _finite_stats(x: jax.Array, prefix: str) -> dict[str, jax.Array]:
    ok = jnp.isfinite(x)
    cnt = jnp.maximum(jnp.sum(ok), 1)
    return {
        f"{prefix}_mean": jnp.sum(jnp.where(ok, x, 0.0)) / cnt,
        f"{prefix}_min": jnp.min(jnp.where(ok, x, jnp.inf)),
        f"{prefix}_max": jnp.max(jnp.where(ok, x, -jnp.inf)),
        f"{prefix}_median": jnp.nanmedian(jnp.where(ok, x, jnp.nan)),
    }


# ----------------------------------------------------------------------------- the stages
def emit(search: Search, state: SearchState, key: jax.Array, child_keys: jax.Array):
    """Stage 1: the children's latents (B, C, T) and the emitter's extra output."""
    ctx = EmitContext(key=key, latents=state.latents, embeddings=state.embeddings, child_keys=child_keys,
                      models=search.models, chunk_size=search.chunk_size)
    children, extra = search.emitter.emit(ctx, 0, search.breed_size)
    return distributed.split_rows(children, search.mesh), extra


def evaluate(search: Search, latents: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stage 2: decode + embed with each individual's own noise key; NaN rows where invalid."""
    emb, ok = individuals.evaluate(search.models, latents, individuals.stream(keys, individuals.NOISE),
                                   search.chunk_size, search.mesh)
    return jnp.where(ok[:, None], emb, jnp.nan), ok


def score(search: Search, state: SearchState, cont_emb, child_emb, child_born, child_slot):
    """Stage 3: sparseness (N+B,) of the pool against pool + archive, and the scorer's aux data."""
    ids = (jnp.concatenate([state.born, child_born]), jnp.concatenate([state.slot, child_slot]))
    return search.scorer.score(state.knn, cont_emb, child_emb, state.archive, ids, search.mesh)


def select(search: Search, key: jax.Array, pool_sparseness: jax.Array) -> jax.Array:
    """Stage 4: (N,) pool indices of the next container."""
    return search.selector.select(key, pool_sparseness, search.container_size)


def _step(search: Search, state: SearchState) -> tuple[SearchState, dict[str, jax.Array]]:
    n, b = search.container_size, search.breed_size
    key, k_emit, k_select = jax.random.split(state.key, 3)
    gen = state.generation + 1
    child_born = jnp.full((b,), gen, jnp.int32)
    child_slot = jnp.arange(b, dtype=jnp.int32)
    child_keys = individuals.individual_keys(state.id_key, child_born, child_slot)

    # 1. emit
    children, extra = emit(search, state, k_emit, child_keys)
    # 2. evaluate the children (and the container, re-decoded with fresh noise, like the original)
    child_emb, child_ok = evaluate(search, children, child_keys)
    if search.reevaluate_container:
        again = jax.vmap(lambda k: jax.random.fold_in(k, gen))(state.identity_keys())
        cont_emb, _ = evaluate(search, state.latents, again)
    else:
        cont_emb = state.embeddings
    # 3. score the pool = container + children (+ archive as neighbours)
    pool_sp, aux = score(search, state, cont_emb, child_emb, child_born, child_slot)
    # 4. select
    survivors = select(search, k_select, pool_sp)
    # 5. archive: novel children are remembered
    child_sp = jnp.where(child_ok, pool_sp[n:], jnp.nan)
    archive, archive_metrics = search.archive.add(state.archive, children, child_emb, child_sp, child_ok,
                                                  child_keys, child_born, child_slot)

    pool_emb = jnp.concatenate([cont_emb, child_emb])
    take = lambda a, c: jnp.concatenate([a, c])[survivors]  # noqa: E731
    invalid = jnp.int32(b) - jnp.sum(child_ok, dtype=jnp.int32)
    new_state = state.replace(
        key=key, generation=gen, latents=take(state.latents, children), embeddings=pool_emb[survivors],
        sparseness=pool_sp[survivors], born=take(state.born, child_born), slot=take(state.slot, child_slot),
        invalid_total=state.invalid_total + invalid, archive=archive,
        knn=search.scorer.update(aux, pool_emb, survivors))
    new_state = distributed.constrain(new_state, search.mesh)

    metrics = {
        "generation": new_state.generation,
        **_finite_stats(new_state.sparseness, "sparseness"),
        "children_sparseness_mean": jnp.nanmean(child_sp),
        "children_sparseness_max": jnp.nanmax(child_sp),
        "new_survivors": jnp.sum(survivors >= n, dtype=jnp.int32),
        "invalid_children": invalid,
    }
    evaluated = Evaluated(embeddings=child_emb, ok=child_ok, sparseness=child_sp, container_embeddings=state.embeddings)
    metrics.update(search.emitter.report(extra, evaluated, 0, b))
    metrics.update(archive_metrics)
    if new_state.knn is not None and hasattr(new_state.knn, "recomputed"):
        metrics["knn_recomputed"] = new_state.knn.recomputed
    return new_state, metrics


#: One generation, jit-compiled: ``state, metrics = step(search, state)``.
step = jax.jit(_step)


def _no_stop() -> bool:
    return False


@functools.partial(jax.jit, static_argnums=(2, 3))
def run_block(search: Search, state: SearchState, length: int,
              stop_requested: Callable[[], bool] | None = None) -> tuple[SearchState, dict[str, jax.Array]]:
    """``length`` generations in one ``lax.scan``; metrics are stacked along a leading axis.

    ``stop_requested`` (a host function, static): checked before every generation through
    ``jax.experimental.io_callback``; once it returns True the remaining generations of the block
    are skipped (state unchanged, metrics NaN / -1), so a stop takes effect within one generation.
    """
    if stop_requested is None:
        return jax.lax.scan(lambda s, _: _step(search, s), state, None, length=length)
    from jax.experimental import io_callback

    _, shape = jax.eval_shape(_step, search, state)

    def skipped(s):
        fill = lambda x: jnp.full(x.shape, -1 if jnp.issubdtype(x.dtype, jnp.integer) else jnp.nan, x.dtype)  # noqa: E731
        return s, jax.tree_util.tree_map(fill, shape)

    def body(carry, _):
        s, stopped = carry
        stop = stopped | io_callback(lambda: jnp.bool_(bool(stop_requested())),
                                     jax.ShapeDtypeStruct((), jnp.bool_), ordered=True)
        s, m = jax.lax.cond(stop, skipped, lambda s_: _step(search, s_), s)
        return (s, stop), m

    (state, _), metrics = jax.lax.scan(body, (state, jnp.bool_(False)), None, length=length)
    return state, metrics
