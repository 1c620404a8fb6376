"""VGGish (torchvggish) in JAX/Flax: front end, network, embeddings, weight converter.

See :mod:`lvns_jax.models.vggish.frontend` (resampling, log-mel, framing),
:mod:`~lvns_jax.models.vggish.network` (the Flax VGG), :mod:`~lvns_jax.models.vggish.model`
(``embed``, ``load``, ``untrained``) and :mod:`~lvns_jax.models.vggish.convert`
(``lvns convert vggish``; needs torch).
"""

from lvns_jax.models.vggish.frontend import num_examples, resample, waveform_to_examples
from lvns_jax.models.vggish.model import VGGishModel, embed, embed_examples, load, untrained
from lvns_jax.models.vggish.network import EMBEDDING_SIZE, VGGish, postprocess

__all__ = [
    "EMBEDDING_SIZE",
    "VGGish",
    "VGGishModel",
    "embed",
    "embed_examples",
    "load",
    "num_examples",
    "postprocess",
    "resample",
    "untrained",
    "waveform_to_examples",
]
