"""PANNs CNN14 (Kong et al. 2020) as a Flax (linen) module, in eval mode, layer for layer.

The reference is ``Cnn14`` of github qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py``
(identical in pip ``panns-inference``), after its torchlibrosa front end
(:mod:`lvns_jax.models.panns.frontend`)::

    log-mel (B, 1, T, 64) -> bn0: BatchNorm2d(64) over the 64 mel bins (transpose, BN, transpose)
    conv_block1 (1 -> 64)     avg pool 2x2      each ConvBlock: conv3x3 (no bias) BN ReLU
    conv_block2 (64 -> 128)   avg pool 2x2                      conv3x3 (no bias) BN ReLU
    conv_block3 (128 -> 256)  avg pool 2x2                      avg pool
    conv_block4 (256 -> 512)  avg pool 2x2
    conv_block5 (512 -> 1024) avg pool 2x2
    conv_block6 (1024 -> 2048) avg pool 1x1 (identity)
    mean over frequency -> (B, 2048, T'); max over time + mean over time
    fc1: Linear(2048, 2048) + ReLU  -> "embedding" (what panns-inference returns)
    (fc_audioset + sigmoid -> the 527 AudioSet tag probabilities; not used here)

Eval mode: dropout is the identity, BatchNorm uses its running statistics (eps 1e-5),
SpecAugment and mixup are off. Pooling is torch's floor mode (a trailing odd row/column is
dropped), so a clip needs at least 32 frames (:data:`frontend.MIN_FRAMES`).

Flax works in NHWC: H = time, W = mel band, C = channels. Parameter tree (all float32)::

    bn0:          {scale, bias, mean, var}            (64,)
    conv_blockK:  {conv1: {kernel (3, 3, cin, cout)}, bn1: {scale, bias, mean, var} (cout,),
                   conv2: {kernel (3, 3, cout, cout)}, bn2: {...}}
    fc1:          {kernel (2048, 2048), bias (2048,)}

(torch ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/``bias``/``mean``/``var``;
conv weights (out, in, kh, kw) -> (kh, kw, in, out); linear (out, in) -> (in, out)).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lvns_jax.models import precision as _precision

EMBEDDING_SIZE = 2048
NUM_BANDS = 64
BN_EPS = 1e-5
BLOCKS = (("conv_block1", 64, 2), ("conv_block2", 128, 2), ("conv_block3", 256, 2),
          ("conv_block4", 512, 2), ("conv_block5", 1024, 2), ("conv_block6", 2048, 1))


def param_shapes() -> dict:
    """Flax parameter shapes, nested like the params tree."""
    def bn(c):
        return {"scale": (c,), "bias": (c,), "mean": (c,), "var": (c,)}

    shapes: dict = {"bn0": bn(NUM_BANDS)}
    cin = 1
    for name, cout, _ in BLOCKS:
        shapes[name] = {"conv1": {"kernel": (3, 3, cin, cout)}, "bn1": bn(cout),
                        "conv2": {"kernel": (3, 3, cout, cout)}, "bn2": bn(cout)}
        cin = cout
    shapes["fc1"] = {"kernel": (2048, EMBEDDING_SIZE), "bias": (EMBEDDING_SIZE,)}
    return shapes


class FrozenBatchNorm(nn.Module):
    """BatchNorm in eval mode over the last axis: ``(x - mean) / sqrt(var + eps) * scale + bias``.

    The running statistics are ordinary entries of the params tree (not a ``batch_stats``
    collection), so the whole model is one params pytree."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        mult = scale * jax.lax.rsqrt(var + self.eps)
        return (x - mean) * mult + bias


# Convolutions with at least this many input channels run as one matmul over 3x3 patches
# (im2col): XLA:CPU's direct convolution is pathologically slow on CNN14's deep layers (tiny
# maps, 1024-2048 channels: 1.7 s against 0.02 s for conv_block6 on a 1 s clip); below it the
# direct NHWC convolution is faster.
IM2COL_MIN_CHANNELS = 512


class Conv3x3(nn.Module):
    """3x3 convolution, stride 1, zero padding 1, no bias (torch ``Conv2d(..., bias=False)``), NHWC."""

    features: int
    policy: _precision.Policy = _precision.FLOAT32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        p = self.policy
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, cin, self.features), jnp.float32)
        if cin < IM2COL_MIN_CHANNELS:
            return _precision.conv(x, kernel, p, (1, 1), ((1, 1), (1, 1)), dn=("NHWC", "HWIO", "NHWC"))
        h, w = x.shape[-3], x.shape[-2]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = jnp.concatenate([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
        return _precision.dot(cols, kernel.reshape(9 * cin, self.features), p, "nhwk,ko->nhwo")


class ConvBlock(nn.Module):
    features: int
    pool: int
    policy: _precision.Policy = _precision.FLOAT32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in (1, 2):
            x = Conv3x3(self.features, policy=self.policy, name=f"conv{i}")(x)
            x = nn.relu(FrozenBatchNorm(name=f"bn{i}")(x))
        if self.pool > 1:
            x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool), padding="VALID")
        return x


class Cnn14(nn.Module):
    """Log-mel (N, T, 64) (dB, from :func:`frontend.log_mel`) -> embeddings (N, 2048), T >= 32.
    ``policy``: matmul precision of the convolutions and fc1 (:mod:`lvns_jax.models.precision`)."""

    policy: _precision.Policy = _precision.FLOAT32

    @nn.compact
    def __call__(self, logmel: jax.Array) -> jax.Array:
        x = FrozenBatchNorm(name="bn0")(logmel.astype(jnp.float32))  # per mel bin
        x = x[..., None]  # (N, T, 64, 1) NHWC
        for name, cout, pool in BLOCKS:
            x = ConvBlock(cout, pool, policy=self.policy, name=name)(x)
        x = jnp.mean(x, axis=2)  # over frequency -> (N, T', 2048)
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)
        if self.policy.bf16:
            return nn.relu(_precision.Dense(EMBEDDING_SIZE, self.policy, name="fc1")(x))
        return nn.relu(nn.Dense(EMBEDDING_SIZE, precision=self.policy.lax_precision, name="fc1")(x))
