"""The VGGish network as a Flax (linen) module, following torchvggish layer for layer.

torchvggish (github harritaylor/torchvggish, the model LVNS-RAVE loads with ``torch.hub``)::

    features:   conv3x3(1->64)  ReLU  maxpool2
                conv3x3(64->128) ReLU maxpool2
                conv3x3(128->256) ReLU conv3x3(256->256) ReLU maxpool2
                conv3x3(256->512) ReLU conv3x3(512->512) ReLU maxpool2
    flatten:    NCHW (N, 512, 6, 4) transposed to (N, 6, 4, 512) then flattened, i.e. the
                (height=time, width=mel, channel) order of the TF model
    embeddings: Linear(12288->4096) ReLU Linear(4096->4096) ReLU Linear(4096->128) ReLU

Differences from Google's TF/Slim release that we follow torchvggish on: the last layer
(``fc2``) has a ReLU in torchvggish (none in TF, whose raw embeddings can be negative), and
PCA/quantisation is a separate, optional step (:func:`postprocess`).

Flax works in NHWC, so the input examples (N, 96, 64) get a trailing channel axis and the
final feature map (N, 6, 4, 512) flattens directly in torchvggish's order. Parameter names
follow the TF scopes: conv1, conv2, conv3_1, conv3_2, conv4_1, conv4_2, fc1_1, fc1_2, fc2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lvns_jax.models import precision as _precision

EMBEDDING_SIZE = 128
CONV_LAYERS = (("conv1", 64), "M", ("conv2", 128), "M", ("conv3_1", 256), ("conv3_2", 256), "M",
               ("conv4_1", 512), ("conv4_2", 512), "M")
FC_LAYERS = (("fc1_1", 4096), ("fc1_2", 4096), ("fc2", EMBEDDING_SIZE))

# torchvggish state-dict prefix for each of our layers
TORCH_NAMES = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3_1": "features.6",
    "conv3_2": "features.8",
    "conv4_1": "features.11",
    "conv4_2": "features.13",
    "fc1_1": "embeddings.0",
    "fc1_2": "embeddings.2",
    "fc2": "embeddings.4",
}

QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0


def param_shapes() -> dict:
    """Flax parameter shapes: {layer: {"kernel": shape, "bias": shape}}."""
    shapes, cin = {}, 1
    for spec in CONV_LAYERS:
        if spec == "M":
            continue
        name, cout = spec
        shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
        cin = cout
    fin = 512 * 6 * 4
    for name, fout in FC_LAYERS:
        shapes[name] = {"kernel": (fin, fout), "bias": (fout,)}
        fin = fout
    return shapes


class VGGish(nn.Module):
    """Examples (N, 96, 64) log-mel -> embeddings (N, 128), pre-PCA (after the final ReLU).

    ``policy``: matmul precision (:mod:`lvns_jax.models.precision`): float32 (HIGHEST, default),
    bfloat16 (bf16 operands, float32 accumulation), default (the backend's)."""

    policy: _precision.Policy = _precision.FLOAT32

    @nn.compact
    def __call__(self, examples: jax.Array) -> jax.Array:
        p = self.policy
        x = examples[..., None].astype(jnp.float32)  # NHWC
        for spec in CONV_LAYERS:
            if spec == "M":
                x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
            else:
                name, cout = spec
                if p.bf16:
                    x = _precision.Conv(cout, (3, 3), ((1, 1), (1, 1)), p, name=name)(x)
                else:
                    x = nn.Conv(cout, (3, 3), padding=((1, 1), (1, 1)), precision=p.lax_precision, name=name)(x)
                x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)  # (N, 6*4*512) in (h, w, c) order, as torchvggish
        for name, fout in FC_LAYERS:
            if p.bf16:
                x = nn.relu(_precision.Dense(fout, p, name=name)(x))
            else:
                x = nn.relu(nn.Dense(fout, precision=p.lax_precision, name=name)(x))
        return x


def postprocess(embeddings: jax.Array, eigen_vectors: jax.Array, means: jax.Array) -> jax.Array:
    """torchvggish's ``Postprocessor``: PCA (with whitening), clip to [-2, 2], 8-bit quantise.

    ``embeddings`` (..., 128); ``eigen_vectors`` (128, 128) (rows are components);
    ``means`` (128,). Returns float32 values in {0, ..., 255} (round half to even, as torch).
    """
    pca = jnp.matmul(embeddings - means, eigen_vectors.T, precision=jax.lax.Precision.HIGHEST)
    clipped = jnp.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
    return jnp.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))
