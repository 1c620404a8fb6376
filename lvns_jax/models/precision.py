"""Matmul precision of the models (the ``precision`` config key): one static :class:`Policy`.

* ``float32`` (default): float32 operands and products, ``lax.Precision.HIGHEST`` on every
  convolution and dense layer, so that TPU (whose default is one bf16 pass) does not silently
  multiply in bfloat16. On CPU/GPU this is what the models always computed.
* ``bfloat16``: operands of the convolutions and dense layers rounded to bfloat16, products
  accumulated in float32 (``preferred_element_type=float32``); biases, activations, norms,
  FFTs, the front ends and the kNN stay float32. XLA:CPU has no bfloat16 convolution: it rounds
  the operands to bfloat16 and convolves in float32 (same numbers, no speed-up). With
  ``conv_as_dot`` (on by default on CPU, see :func:`policy`) a convolution is instead lowered to
  bfloat16 dots (one per tap, or one over im2col patches), which XLA:CPU runs natively.
* ``default``: whatever the backend's default precision is (``precision=None``): float32 on
  CPU/GPU (TF32 on Ampere+ GPUs if enabled), one bfloat16 pass on TPU.

A :class:`Policy` is hashable (a Flax module attribute, a jit-static value); the ``conv``,
``conv_transpose`` helpers and :class:`Conv` / :class:`Dense` modules take one.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NAMES = ("float32", "bfloat16", "default")


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str = "float32"
    conv_as_dot: bool = False  # bfloat16: lower convolutions to bf16 dots (XLA:CPU has no bf16 convolution)

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"precision: {self.name!r} is not one of {', '.join(NAMES)}")

    @property
    def lax_precision(self):
        """``precision=`` of lax ops: HIGHEST for float32, None (backend default) otherwise."""
        return lax.Precision.HIGHEST if self.name == "float32" else None

    @property
    def bf16(self) -> bool:
        return self.name == "bfloat16"

    def operands(self, *xs):
        """The operands of a product, cast to the compute dtype (bfloat16 or unchanged)."""
        if not self.bf16:
            return xs
        return tuple(x.astype(jnp.bfloat16) for x in xs)

    def kwargs(self) -> dict:
        """Extra keyword arguments of a lax product (precision, accumulation type)."""
        if self.bf16:
            return {"preferred_element_type": jnp.float32}
        return {"precision": self.lax_precision}


FLOAT32 = Policy("float32")

#: Platforms whose XLA compiler turns bfloat16 convolutions back into float32 ones.
BF16_CONV_UPCAST_PLATFORMS = ("cpu",)


def policy(name: str, platform: str | None = None) -> Policy:
    """The policy of a ``precision`` value for ``platform`` (default: the running backend)."""
    if name == "bfloat16":
        platform = platform or jax.default_backend()
        return Policy(name, conv_as_dot=platform in BF16_CONV_UPCAST_PLATFORMS)
    return Policy(name)


def cast_params(params, p: Policy, select):
    """``params`` with the leaves whose '/'-joined path ``select(path)`` accepts stored in bfloat16
    under a bfloat16 policy (the weights of the products: cast once, not on every call inside the
    jitted step, where XLA:CPU spends more on the conversion than the bf16 product saves); unchanged
    otherwise."""
    if not p.bf16:
        return params

    def leaf(path, x):
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        return x.astype(jnp.bfloat16) if select(name) else x

    return jax.tree_util.tree_map_with_path(leaf, params)


def dot(x, w, p: Policy, subscripts: str = "...k,ko->...o"):
    """``einsum(subscripts, x, w)`` under policy ``p`` (float32 result)."""
    x, w = p.operands(x, w)
    return jnp.einsum(subscripts, x, w, **p.kwargs())


def conv(x, w, p: Policy, strides: Sequence[int], padding: Sequence[tuple[int, int]],
         rhs_dilation: Sequence[int] | None = None, groups: int = 1, dn: tuple = ("NWC", "WIO", "NWC")):
    """``lax.conv_general_dilated`` in channels-last layout (NWC / NHWC, kernel W(H)IO) under ``p``.

    With ``p.conv_as_dot`` (bfloat16 on XLA:CPU) and ``groups == 1`` the convolution is a sum of
    one bf16 dot per kernel tap (float32 accumulation); the result is the same convolution."""
    nd = w.ndim - 2
    if rhs_dilation is None:
        rhs_dilation = (1,) * nd
    if p.conv_as_dot and groups == 1 and dn in (("NWC", "WIO", "NWC"), ("NHWC", "HWIO", "NHWC")):
        return _conv_as_dots(x, w, tuple(strides), tuple(tuple(q) for q in padding), tuple(rhs_dilation))
    x, w = p.operands(x, w)
    return lax.conv_general_dilated(x, w, window_strides=tuple(strides), padding=[tuple(q) for q in padding],
                                    rhs_dilation=tuple(rhs_dilation), dimension_numbers=dn,
                                    feature_group_count=groups, **p.kwargs())


def _conv_as_dots(x, w, strides, padding, dilation):
    """Channels-last convolution as bf16 dots: sum over taps of ``x[shifted] @ w[tap]``."""
    nd = w.ndim - 2
    x = jnp.pad(x.astype(jnp.bfloat16), ((0, 0),) + padding + ((0, 0),))
    w = w.astype(jnp.bfloat16)
    spatial = x.shape[1:-1]
    out = [(spatial[i] - dilation[i] * (w.shape[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = None
    for tap in _taps(w.shape[:nd]):
        sl = tuple(slice(tap[i] * dilation[i], tap[i] * dilation[i] + (out[i] - 1) * strides[i] + 1, strides[i])
                   for i in range(nd))
        term = jnp.einsum("...c,co->...o", x[(slice(None),) + sl], w[tap], preferred_element_type=jnp.float32)
        y = term if y is None else y + term
    return y


def _taps(shape):
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _taps(shape[1:]):
            yield (i,) + rest


class Conv(nn.Module):
    """``nn.Conv`` (channels-last, params ``kernel`` / ``bias``, float32) computed under ``policy``."""

    features: int
    kernel_size: tuple
    padding: tuple
    policy: Policy = FLOAT32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
        nd = len(self.kernel_size)
        dn = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
        y = conv(x, kernel, self.policy, (1,) * nd, self.padding, dn=dn)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class Dense(nn.Module):
    """``nn.Dense`` (params ``kernel`` / ``bias``, float32) computed under ``policy``."""

    features: int
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return dot(x, kernel, self.policy) + bias
