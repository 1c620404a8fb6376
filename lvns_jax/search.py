"""The search: state, the one-jit generation step, and its ``lax.scan`` loop.

One generation (:func:`step`), all inside one ``jax.jit``::

    breed      -> crossover + mutation of container members      (lvns_jax.operators)
    evaluate   -> decode children to audio, embed the audio        (models, in chunks)
    sparseness -> kNN sparseness of every pool member              (lvns_jax.novelty)
    select     -> the next container                               (lvns_jax.selection)

The state is an immutable pytree; its PRNG key is split every generation, so a run is a pure
function of the seed. :func:`run` (in :mod:`lvns_jax.runner`) chains blocks of generations with
:func:`run_block` and does the host-side logging and checkpointing between blocks.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lvns_jax import container as container_lib
from lvns_jax import gradient
from lvns_jax import distributed, knn_incremental, novelty, operators, selection
from lvns_jax.config import Config
from lvns_jax.models import Models, merge_chunks, split_chunks


@struct.dataclass
class SearchState:
    key: jax.Array  # typed PRNG key, split once per generation
    generation: jax.Array  # int32 scalar: generations done
    latents: jax.Array  # (N, C, T) float32 container
    embeddings: jax.Array  # (N, D) float32, cached: each individual is embedded once, when born
    sparseness: jax.Array  # (N,) float32 sparseness of each member in the pool it survived
    born: jax.Array  # (N,) int32 generation at which each member was made
    invalid_total: jax.Array  # int32 scalar: children with NaN/inf audio or embedding so far
    models: Models  # decoder/embedder functions (static) and params (leaves)
    config: Config = struct.field(pytree_node=False)
    knn: Any = None  # knn_incremental.KnnLists when config.knn == "incremental" (derived data, not checkpointed)

    # Fields saved in checkpoints (everything but the models and the static config).
    EVOLUTION_FIELDS = ("key", "generation", "latents", "embeddings", "sparseness", "born", "invalid_total")

    def evolution_arrays(self) -> dict[str, jax.Array]:
        return {f: getattr(self, f) for f in self.EVOLUTION_FIELDS}


def evaluate(models: Models, latents: jax.Array, key: jax.Array, chunk_size: int,
             first_chunk: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
    """Decode then embed ``latents`` (b, C, T) in ``ceil(b / chunk_size)`` equal chunks.

    Returns embeddings (b, D) and a (b,) bool mask of valid individuals (finite audio and embedding).
    Each chunk's decoder noise uses its own key (``fold_in(key, chunk index)``); ``first_chunk`` is the
    index of the first chunk (a device's offset when the population is sharded).
    """
    b = latents.shape[0]
    z = split_chunks(latents, chunk_size)

    def one_chunk(args):
        i, zc = args
        audio = models.decode(models.decoder_params, zc, jax.random.fold_in(key, first_chunk + i))
        emb = models.embed(models.embedder_params, audio)
        ok = jnp.all(jnp.isfinite(audio), axis=-1) & jnp.all(jnp.isfinite(emb), axis=-1)
        return emb.astype(jnp.float32), ok

    emb, ok = jax.lax.map(one_chunk, (jnp.arange(z.shape[0]), z))
    return merge_chunks(emb, b), merge_chunks(ok, b)


def _knn_chunk(cfg: Config) -> int | None:
    return cfg.knn_chunk or None


def _pool_sparseness(state: SearchState, cont_emb: jax.Array, child_emb: jax.Array, pool_emb: jax.Array):
    """Sparseness of the pool by the configured kNN path; with the pool's kNN lists when incremental."""
    cfg = state.config
    if cfg.knn == "incremental":
        return knn_incremental.pool_knn(state.knn, pool_emb, cfg.container_size, cfg.k, _knn_chunk(cfg))
    return distributed.sparseness(cfg, cont_emb, child_emb), None


def init(config: Config, key: jax.Array | int | None = None, models: Models | None = None) -> SearchState:
    """Initial state: container from ``config.init``, decoded and embedded once.

    ``key`` defaults to ``jax.random.key(config.seed)``; ``models`` defaults to those the config names.
    """
    if models is None:
        from lvns_jax.models.build import build_models

        models = build_models(config)
    if key is None:
        key = jax.random.key(config.seed)
    elif isinstance(key, int):
        key = jax.random.key(key)
    k_init, k_eval, k_run = jax.random.split(key, 3)
    latents = container_lib.init_container(
        k_init, config.init, config.container_size, config.latent_channels, config.latent_frames,
        config.dataset_path, config.dataset_offset)
    embeddings, _ = distributed.evaluate_initial(config, models, latents, k_eval, evaluate)
    # Sparseness of the initial container within itself (k capped at N-1 for this first measure).
    k0 = min(config.k, config.container_size - 1) if config.sparseness_rule == "nearest" else \
        min(config.k, config.container_size)
    sp = novelty.sparseness(embeddings, k0, config.sparseness_rule, _knn_chunk(config))
    n = config.container_size
    return distributed.place(knn_incremental.attach(SearchState(
        key=k_run, generation=jnp.int32(0), latents=latents, embeddings=embeddings,
        sparseness=sp, born=jnp.zeros((n,), jnp.int32), invalid_total=jnp.int32(0),
        models=models, config=config)))


def _finite_stats(x: jax.Array, prefix: str) -> dict[str, jax.Array]:
    ok = jnp.isfinite(x)
    cnt = jnp.maximum(jnp.sum(ok), 1)
    return {
        f"{prefix}_mean": jnp.sum(jnp.where(ok, x, 0.0)) / cnt,
        f"{prefix}_min": jnp.min(jnp.where(ok, x, jnp.inf)),
        f"{prefix}_max": jnp.max(jnp.where(ok, x, -jnp.inf)),
        f"{prefix}_median": jnp.nanmedian(jnp.where(ok, x, jnp.nan)),
    }


def _step(state: SearchState) -> tuple[SearchState, dict[str, jax.Array]]:
    cfg, models = state.config, state.models
    n = cfg.container_size
    key, k_breed, k_children, k_container, k_select = jax.random.split(state.key, 5)

    # 1. breed: crossover + mutation
    children, breeding = operators.breed(
        k_breed, state.latents, cfg.breed_size, crossover_mode=cfg.crossover, mutation=gradient.paper_mutation(cfg),
        distribution=cfg.mutation_distribution, scale=cfg.mutation_scale,
        mutate_last_frame=cfg.mutate_last_frame)
    if gradient.enabled(cfg):  # 1b. gradient children: crossover + optax steps up the novelty gradient
        children, grad_info = gradient.apply(cfg, models, jax.random.fold_in(k_breed, 1), state.latents,
                                             state.embeddings, children, breeding)

    # 2. evaluate: decode + embed the children (and the container, if re-evaluating like the original)
    child_emb, child_ok = distributed.evaluate(cfg, models, children, k_children, evaluate)
    child_emb = jnp.where(child_ok[:, None], child_emb, jnp.nan)
    if cfg.reevaluate_container:
        cont_emb, cont_ok = distributed.evaluate(cfg, models, state.latents, k_container, evaluate)
        cont_emb = jnp.where(cont_ok[:, None], cont_emb, jnp.nan)
    else:
        cont_emb = state.embeddings

    # 3. sparseness over the pool = container + children (invalid members get -inf)
    pool_emb = jnp.concatenate([cont_emb, child_emb])
    pool_sp, pool_knn = _pool_sparseness(state, cont_emb, child_emb, pool_emb)

    # 4. select the next container
    survivors = selection.select(cfg.selection, k_select, pool_sp, n)
    pool_latents = jnp.concatenate([state.latents, children])
    pool_born = jnp.concatenate([state.born, jnp.full((cfg.breed_size,), state.generation + 1, jnp.int32)])
    invalid = jnp.int32(cfg.breed_size) - jnp.sum(child_ok, dtype=jnp.int32)
    new_state = state.replace(
        key=key, generation=state.generation + 1, latents=pool_latents[survivors],
        embeddings=pool_emb[survivors], sparseness=pool_sp[survivors], born=pool_born[survivors],
        invalid_total=state.invalid_total + invalid)
    if pool_knn is not None:  # incremental kNN: the next container's neighbour lists
        new_state = new_state.replace(knn=knn_incremental.update(pool_knn, pool_emb, survivors, cfg.k, _knn_chunk(cfg)))
    new_state = distributed.constrain(new_state)

    child_sp = jnp.where(child_ok, pool_sp[n:], jnp.nan)
    metrics = {
        "generation": new_state.generation,
        **_finite_stats(new_state.sparseness, "sparseness"),
        "children_sparseness_mean": jnp.nanmean(child_sp),
        "children_sparseness_max": jnp.nanmax(child_sp),
        "new_survivors": jnp.sum(survivors >= n, dtype=jnp.int32),
        "invalid_children": invalid,
        "crossover_point": breeding.crossover_point[0],
    }
    if gradient.enabled(cfg):
        metrics.update(gradient.step_metrics(cfg, grad_info, child_emb, child_ok, state.embeddings, child_sp))
    if pool_knn is not None:
        metrics["knn_recomputed"] = new_state.knn.recomputed
    return new_state, metrics


#: One generation, jit-compiled: ``state, metrics = step(state)``.
step = jax.jit(_step)


@functools.partial(jax.jit, static_argnums=1)
def run_block(state: SearchState, length: int) -> tuple[SearchState, dict[str, jax.Array]]:
    """``length`` generations in one ``lax.scan``; metrics are stacked along a leading axis."""
    return jax.lax.scan(lambda s, _: _step(s), state, None, length=length)


def run(config: Config, **kwargs: Any) -> SearchState:
    """Run a whole search with logging and checkpoints; see :func:`lvns_jax.runner.run`."""
    from lvns_jax.runner import run as _run

    return _run(config, **kwargs)
