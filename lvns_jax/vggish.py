"""VGGish embeddings for LVNS (thin re-export of :mod:`lvns_jax.models.vggish`).

    model = lvns_jax.vggish.load("weights/vggish")      # or lvns_jax.vggish.untrained(seed)
    emb = model.embed(audio, sample_rate)               # (B, S) -> (B, 128), jit-compiled
    f = model.embed_fn(sample_rate)                     # pure f(audio) for use inside jit
    g = model.pure_embed(sample_rate)                   # pure g(params, audio): params as jit args
    emb = lvns_jax.vggish.embed(model.params, audio, sample_rate)   # params as an argument
"""

from lvns_jax.models.vggish import (
    EMBEDDING_SIZE,
    VGGish,
    VGGishModel,
    embed,
    load,
    num_examples,
    untrained,
    waveform_to_examples,
)

__all__ = [
    "EMBEDDING_SIZE",
    "VGGish",
    "VGGishModel",
    "embed",
    "load",
    "num_examples",
    "untrained",
    "waveform_to_examples",
]
