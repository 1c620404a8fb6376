"""The plug-in registry: every stage of a generation is chosen by name from here.

Five kinds of plug-in make one generation (see :mod:`lvns_jax.search`)::

    emitter    container -> children latents            lvns_jax/emitters/   (paper, gradient, mix)
    generator  latents -> audio                         lvns_jax/generators.py (rave, toy)
    embedder   audio -> embeddings                      lvns_jax/embedders.py  (vggish, panns, toy)
    scorer     pool (+ archive) embeddings -> sparseness lvns_jax/scoring.py    (brute, incremental)
    selector   sparseness -> next container              lvns_jax/selection.py  (novelty, random, replace)
    archive    children -> a bounded novelty archive     lvns_jax/archive.py    (none, threshold, random)

A plug-in module registers a *builder* ``build(cfg, ...) -> plug-in`` under a name::

    from lvns_jax import plugins

    @plugins.register("selector", "tournament")
    def build(cfg):
        return Tournament(size=cfg.container_size)

and the module is listed once in :data:`MODULES` (the one registration line). The builders are the
only code that reads the mode keys of a :class:`~lvns_jax.config.Config`; :func:`lvns_jax.assemble.assemble`
calls them. A name that is not registered is a one-line :class:`~lvns_jax.errors.ConfigError`
listing the registered names.
"""

from __future__ import annotations

import importlib
from typing import Callable

from lvns_jax.errors import ConfigError

KINDS = ("emitter", "generator", "embedder", "scorer", "selector", "archive")

#: Modules whose import registers the built-in plug-ins (add yours here: the one registration line).
MODULES = (
    "lvns_jax.emitters.paper",
    "lvns_jax.emitters.gradient",
    "lvns_jax.emitters.mix",
    "lvns_jax.generators",
    "lvns_jax.embedders",
    "lvns_jax.scoring",
    "lvns_jax.selection",
    "lvns_jax.archive",
)

_REGISTRY: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}
_loaded = False


def register(kind: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``builder`` as the ``kind`` plug-in called ``name``."""
    if kind not in KINDS:
        raise ValueError(f"plug-in kind must be one of {KINDS}, got {kind!r}")

    def deco(builder: Callable) -> Callable:
        have = _REGISTRY[kind].get(name)
        if have is not None and have.__module__ != builder.__module__:
            raise ValueError(f"{kind} plug-in {name!r} registered twice ({have.__module__}, {builder.__module__})")
        _REGISTRY[kind][name] = builder
        return builder

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(module)


def names(kind: str) -> tuple[str, ...]:
    """Registered names of a kind, in registration order."""
    _load()
    return tuple(_REGISTRY[kind])


def builder(kind: str, name: str, key: str | None = None) -> Callable:
    """The builder registered as ``name``; ConfigError naming the config ``key`` if there is none."""
    _load()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        where = key or kind
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(_REGISTRY[kind])}") from None
