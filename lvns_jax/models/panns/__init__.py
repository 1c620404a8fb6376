"""PANNs CNN14 (Kong et al. 2020) in JAX/Flax: front end, network, embeddings, weight converter.

See :mod:`lvns_jax.models.panns.frontend` (resampling to 32 kHz, torchlibrosa-style log-mel),
:mod:`~lvns_jax.models.panns.network` (the Flax CNN14, eval mode), :mod:`~lvns_jax.models.panns.model`
(``embed``, ``load``, ``untrained``, ``PannsModel``) and :mod:`~lvns_jax.models.panns.convert`
(``lvns convert panns``; needs torch)::

    model = panns.load("weights/panns")          # or panns.untrained(seed)  (UNTRAINED, random init)
    f = model.pure_embed(44100)                  # pure f(params, audio (B, S)) -> (B, 2048) float32
    emb = jax.jit(f)(model.params, audio)        # differentiable w.r.t. audio as well
"""

from lvns_jax.models.panns.frontend import SAMPLE_RATE, log_mel, log_mel_32k, mel_matrix
from lvns_jax.models.panns.model import PannsModel, embed, embed_logmel, load, min_samples, untrained
from lvns_jax.models.panns.network import EMBEDDING_SIZE, Cnn14

__all__ = [
    "EMBEDDING_SIZE",
    "SAMPLE_RATE",
    "Cnn14",
    "PannsModel",
    "embed",
    "embed_logmel",
    "load",
    "log_mel",
    "log_mel_32k",
    "mel_matrix",
    "min_samples",
    "untrained",
]
