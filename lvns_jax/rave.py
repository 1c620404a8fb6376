"""RAVE decoder entry points: ``load(path)`` and ``untrained(config, seed)``.

See :mod:`lvns_jax.models.rave` for details.
"""

from lvns_jax.models.rave import CONFIGS, RaveDecoder, config_spec, load, untrained

__all__ = ["load", "untrained", "config_spec", "RaveDecoder", "CONFIGS"]
