"""A mix of emitters (``emitter = "mix"``): each makes its share of the children, in slot order.

``emitter_mix = "gradient:0.25,paper"``: the first ``round(0.25 * breed_size)`` children are the
gradient emitter's, the rest the paper emitter's (one entry may omit its share: it takes what is
left). Like QDax's ``MixingEmitter``. Every emitter sees the same generation key, so the paper's
children in a mix are bit-identical to the same slots of a paper-only run.

The legacy keys map onto it: ``mutation = "add" | "replace"`` with ``gradient_fraction = f`` in
(0, 1) is ``emitter_mix = "gradient:f,paper"``.
"""

from __future__ import annotations

import dataclasses
import math

from lvns_jax import plugins
from lvns_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MixEmitter:
    parts: tuple  # ((name, emitter, count), ...), counts summing to breed_size

    def emit(self, ctx, start: int, count: int):
        import jax.numpy as jnp

        if count != sum(c for _, _, c in self.parts):
            raise ValueError(f"mix of {sum(c for _, _, c in self.parts)} children asked for {count}")
        out, extras, s = [], [], start
        for _, emitter, c in self.parts:
            z, extra = emitter.emit(ctx, s, c)
            out.append(z)
            extras.append(extra)
            s += c
        return jnp.concatenate(out), tuple(extras)

    def report(self, extras, evaluated, start: int, count: int) -> dict:
        import jax.numpy as jnp

        metrics, s = {}, start
        for (name, emitter, c), extra in zip(self.parts, extras):
            for key, value in emitter.report(extra, evaluated, s, c).items():
                metrics.setdefault(key, value)
            metrics[f"{name}_children_sparseness"] = jnp.nanmean(evaluated.sparseness[s:s + c])
            s += c
        names = [name for name, _, _ in self.parts]
        if "gradient" in names and "paper" in names:  # what the gradient children gain over the paper's
            metrics["gradient_random_children_sparseness"] = metrics["paper_children_sparseness"]
            metrics["gradient_gain_vs_random"] = (metrics["gradient_children_sparseness"]
                                                  - metrics["paper_children_sparseness"])
        return metrics


def shares_of(cfg) -> list[tuple[str, float | None]]:
    """``emitter_mix`` (or the legacy gradient_fraction) as [(name, share or None), ...]."""
    if cfg.emitter != "mix":  # legacy: mutation add|replace + gradient_fraction
        return [("gradient", cfg.gradient_fraction), ("paper", None)]
    parts = []
    for item in filter(None, (x.strip() for x in cfg.emitter_mix.split(","))):
        name, _, share = item.partition(":")
        try:
            parts.append((name.strip(), float(share) if share else None))
        except ValueError:
            raise ConfigError(f"emitter_mix: share {share!r} of {name!r} is not a number") from None
    if len(parts) < 2:
        raise ConfigError(f"emitter_mix: a mix needs at least two emitters, e.g. 'gradient:0.5,paper' "
                          f"(got {cfg.emitter_mix!r})")
    return parts


def counts(shares: list[tuple[str, float | None]], total: int) -> list[tuple[str, int]]:
    """Children per emitter: round(share * total) each, the share-less one takes the rest."""
    if sum(s is None for _, s in shares) > 1:
        raise ConfigError("emitter_mix: only one emitter may omit its share")
    out = [(n, int(math.floor(s * total + 0.5)) if s is not None else None) for n, s in shares]
    given = sum(c for _, c in out if c is not None)
    if any(s is None for _, s in shares):
        out = [(n, total - given if c is None else c) for n, c in out]
    if sum(c for _, c in out) != total or any(c < 1 for _, c in out):
        raise ConfigError(f"emitter_mix: shares give {[c for _, c in out]} children, which must be >= 1 each "
                          f"and sum to breed_size = {total}")
    return out


@plugins.register("emitter", "mix")
def build(cfg):
    parts = []
    for name, count in counts(shares_of(cfg), cfg.breed_size):
        if name == "mix":
            raise ConfigError("emitter_mix: a mix cannot contain a mix")
        parts.append((name, plugins.builder("emitter", name, "emitter_mix")(cfg), count))
    return MixEmitter(tuple(parts))
