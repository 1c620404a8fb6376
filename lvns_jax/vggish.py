"""VGGish embeddings for LVNS (thin re-export of :mod:`lvns_jax.models.vggish`).

    model = lvns_jax.vggish.load("weights/vggish")      # or lvns_jax.vggish.untrained(seed)
    emb = model.embed(audio, sample_rate)               # (B, S) -> (B, 128), jit-compiled
    f = model.embed_fn(sample_rate)                     # pure f(audio) for use inside jit
    g = model.pure_embed(sample_rate)                   # pure g(params, audio): params as jit args
    emb = lvns_jax.vggish.embed(model.params, audio, sample_rate)   # params as an argument

Clips with no complete 0.96 s example (< 15600 samples after resampling to 16 kHz) embed to
all-NaN rows (torchvggish fails on them). ``untrained(seed)`` models say UNTRAINED in their
``description`` and have ``trained == False``.
"""

from lvns_jax.models.vggish import (
    EMBEDDING_SIZE,
    VGGish,
    VGGishModel,
    embed,
    embed_examples,
    load,
    num_examples,
    postprocess,
    untrained,
    waveform_to_examples,
)

__all__ = [
    "EMBEDDING_SIZE",
    "VGGish",
    "VGGishModel",
    "embed",
    "embed_examples",
    "load",
    "num_examples",
    "postprocess",
    "untrained",
    "waveform_to_examples",
]
