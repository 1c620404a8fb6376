"""Assemble a :class:`~lvns_jax.search.Search` from a :class:`~lvns_jax.config.Config`.

This is the only place that reads the mode keys: each plug-in's builder (:mod:`lvns_jax.plugins`)
gets the config and returns a static plug-in object; the models are built from the ``rave`` and
``embedder`` keys. Everything after this sees plug-ins, never the config.
"""

from __future__ import annotations

import logging

from lvns_jax import distributed, embedders, generators, plugins
from lvns_jax.config import Config
from lvns_jax.container import ContainerInit, dataset_model_warning
from lvns_jax.errors import ConfigError
from lvns_jax.models import Models
from lvns_jax.search import Search

log = logging.getLogger("lvns_jax")


def emitter_name(cfg: Config) -> str:
    """The emitter plug-in of a config (the legacy ``mutation = gradient`` / ``gradient_fraction`` keys
    select the gradient emitter / a mix)."""
    if cfg.emitter != "paper":
        return cfg.emitter
    if cfg.mutation == "gradient":
        return "gradient"
    if cfg.gradient_fraction >= 1.0:
        return "gradient"
    if cfg.gradient_fraction > 0:
        return "mix"
    return "paper"


def check(cfg: Config) -> Config:
    """``cfg`` if every plug-in key names a registered plug-in whose builder accepts the config (cheap:
    no models are built); else a one-line ConfigError naming the key."""
    from lvns_jax.config import PLUGIN_KEYS

    for key, kind in PLUGIN_KEYS.items():
        name = emitter_name(cfg) if key == "emitter" else getattr(cfg, key)
        plugins.builder(kind, name, key)(cfg)
    if cfg.embedder.startswith("untrained:"):
        plugins.builder("embedder", cfg.embedder.split(":", 1)[1], "embedder")
    return cfg


def build_models(cfg: Config, platform: str | None = None) -> Models:
    """The generator (``rave`` key) and embedder (``embedder`` key) as the engine's :class:`Models`, for
    ``platform`` (default: the running backend)."""
    import jax

    platform = platform or jax.default_backend()
    gen = plugins.builder("generator", generators.name_of(cfg.rave), "rave")(cfg, platform=platform)
    if cfg.init == "dataset":  # latents must be decoded by the model that encoded them
        mismatch = dataset_model_warning(cfg.dataset_path, cfg.rave)
        if mismatch:
            log.warning("%s", mismatch)
    if gen.latent_channels != cfg.latent_channels:
        raise ConfigError(f"latent_channels: the RAVE model {cfg.rave!r} takes {gen.latent_channels} latent "
                          f"channels, the config says {cfg.latent_channels}")
    name, weights = embedders.name_of(cfg.embedder)
    emb = plugins.builder("embedder", name, "embedder")(cfg, weights, gen.sample_rate, cfg.latent_frames * gen.hop,
                                                         platform=platform)
    for desc, trained in ((gen.description, gen.trained), (emb.description, emb.trained)):
        if not trained:
            log.warning("%s: untrained weights, the sounds and novelty scores are NOT meaningful", desc)
    return Models(decoder_params=gen.params, embedder_params=emb.params, decode=gen.decode, embed=emb.embed,
                  sample_rate=gen.sample_rate, hop=gen.hop, latent_channels=gen.latent_channels,
                  description=(gen.description, emb.description), trained=gen.trained and emb.trained,
                  embed_grad=emb.embed_grad)


def assemble(cfg: Config, models: Models | None = None, devices=None) -> Search:
    """The search a config describes. ``models``: use these instead of the ``rave``/``embedder`` keys
    (tests, benchmarks); ``devices``: the devices to shard over (default: the running ones)."""
    check(cfg)
    if models is None:
        models = build_models(cfg, list(devices)[0].platform if devices is not None else None)
    mesh = distributed.make_mesh(cfg, devices)
    if mesh is not None and cfg.archive != "none" and cfg.archive_size % distributed.shards(mesh):
        raise ConfigError(f"archive_size: {cfg.archive_size} must divide by the {distributed.shards(mesh)} devices "
                          f"(archive rows are split across devices)")
    return Search(
        models=models,
        emitter=plugins.builder("emitter", emitter_name(cfg), "emitter")(cfg),
        scorer=plugins.builder("scorer", cfg.knn, "knn")(cfg),
        selector=plugins.builder("selector", cfg.selection, "selection")(cfg),
        archive=plugins.builder("archive", cfg.archive, "archive")(cfg),
        initializer=ContainerInit(cfg.init, cfg.container_size, cfg.latent_channels, cfg.latent_frames,
                                  cfg.dataset_path, cfg.dataset_offset),
        container_size=cfg.container_size, breed_size=cfg.breed_size, chunk_size=cfg.chunk_size,
        reevaluate_container=cfg.reevaluate_container, mesh=mesh, seed=cfg.seed)
