"""Building blocks of the RAVE decoders, in channels-last (NWC) layout.

A decoder is described by a static *spec*: nested tuples that name each operation and its
hyperparameters (hashable, so it can be a Flax module attribute and a jit-static value).
Parameters live in a flat dict keyed by the ``pid`` strings found in the spec.

Spec nodes::

    ("seq", (node, ...))                      apply in order
    ("sum", (node, ...))                      sum of parallel branches (RAVE v1 ResidualStack)
    ("res", node)                             x + node(x)
    ("conv", pid, k, cin, cout, stride, dilation, groups, pad_left, pad_right, bias)
    ("convt", pid, k, cin, cout, stride, padding, output_padding, bias)
    ("lrelu", slope)
    ("snake", pid, dim)                       x + sin(a x)^2 / (a + 1e-9)
    ("id",)

Weights: ``conv`` -> ``{pid}_w`` of shape (k, cin // groups, cout) and ``{pid}_b`` (cout,);
``convt`` -> ``{pid}_w`` of shape (k, cin, cout) in PyTorch's (un-flipped) tap order;
``snake`` -> ``{pid}_alpha`` (dim,).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lvns_jax.models.precision import FLOAT32, Policy
from lvns_jax.models.precision import conv as _conv

_DN = ("NWC", "WIO", "NWC")

# Accessor: get(name, shape, init) -> array. Flax modules pass ``self.param``; pure code a dict lookup.
Getter = Callable[[str, tuple, Callable], jnp.ndarray]


def torch_conv_init(fan_in: int):
    """PyTorch's default Conv1d init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def ones_init(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def conv1d(x, w, b=None, stride=1, dilation=1, groups=1, pad=(0, 0), policy: Policy = FLOAT32):
    """x (B, T, Cin), w (K, Cin/groups, Cout) -> (B, T', Cout); cross-correlation like torch.
    ``policy``: matmul precision (:mod:`lvns_jax.models.precision`)."""
    y = _conv(x, w, policy, (stride,), [tuple(pad)], (dilation,), groups, _DN)
    if b is not None:
        y = y + b
    return y


def conv_transpose1d(x, w, b=None, stride=1, padding=0, output_padding=0, policy: Policy = FLOAT32):
    """torch.nn.functional.conv_transpose1d in NWC, done polyphase (no zero-stuffing).

    w is (K, Cin, Cout) with w[k, i, o] = torch_weight[i, o, k]. With J = ceil(K/stride), the
    un-cropped output is full[m*s + q] = sum_j x[m - j] w[j*s + q]; one stride-1 convolution
    with J taps and s*Cout output channels computes all phases q at once.
    """
    B, L, cin = x.shape
    K, _, cout = w.shape
    s = stride
    J = -(-K // s)
    if J * s != K:
        w = jnp.pad(w, ((0, J * s - K), (0, 0), (0, 0)))
    # W'[t, i, q*cout + o] = w[(J-1-t)*s + q, i, o]
    wp = w.reshape(J, s, cin, cout)[::-1]            # [t, q, i, o]
    wp = jnp.transpose(wp, (0, 2, 1, 3)).reshape(J, cin, s * cout)
    y = _conv(x, wp, policy, (1,), [(J - 1, J - 1)], (1,), 1, _DN)
    y = y.reshape(B, (L + J - 1) * s, cout)
    out_len = (L - 1) * s - 2 * padding + K + output_padding
    end = padding + out_len
    if end > y.shape[1]:
        y = jnp.pad(y, ((0, 0), (0, end - y.shape[1]), (0, 0)))
    y = y[:, padding:end]
    if b is not None:
        y = y + b
    return y


def snake(x, alpha):
    return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(jnp.sin(alpha * x))


def mod_sigmoid(x):
    return 2.0 * jax.nn.sigmoid(x) ** 2.3 + 1e-7


def apply_node(node, x, get: Getter, policy: Policy = FLOAT32):
    """Run one spec node on x (B, T, C); convolutions under ``policy`` (matmul precision)."""
    op = node[0]
    if op == "seq":
        for child in node[1]:
            x = apply_node(child, x, get, policy)
        return x
    if op == "sum":
        outs = [apply_node(child, x, get, policy) for child in node[1]]
        y = outs[0]
        for o in outs[1:]:
            y = y + o
        return y
    if op == "res":
        return x + apply_node(node[1], x, get, policy)
    if op == "conv":
        _, pid, k, cin, cout, stride, dil, groups, pl, pr, bias = node
        w = get(f"{pid}_w", (k, cin // groups, cout), torch_conv_init(cin // groups * k))
        b = get(f"{pid}_b", (cout,), torch_conv_init(cin // groups * k)) if bias else None
        return conv1d(x, w, b, stride, dil, groups, (pl, pr), policy)
    if op == "convt":
        _, pid, k, cin, cout, stride, padding, out_pad, bias = node
        w = get(f"{pid}_w", (k, cin, cout), torch_conv_init(cout * k))
        b = get(f"{pid}_b", (cout,), torch_conv_init(cout * k)) if bias else None
        return conv_transpose1d(x, w, b, stride, padding, out_pad, policy)
    if op == "lrelu":
        return jnp.where(x >= 0, x, node[1] * x)
    if op == "snake":
        _, pid, dim = node
        return snake(x, get(f"{pid}_alpha", (dim,), ones_init))
    if op == "id":
        return x
    raise ValueError(f"unknown spec node {op!r}")


def out_length(node, length: int) -> int:
    """Time length after a node (static shape arithmetic)."""
    op = node[0]
    if op == "seq":
        for c in node[1]:
            length = out_length(c, length)
        return length
    if op in ("sum",):
        return out_length(node[1][0], length)
    if op == "res":
        return length
    if op == "conv":
        _, pid, k, cin, cout, stride, dil, groups, pl, pr, bias = node
        return (length + pl + pr - dil * (k - 1) - 1) // stride + 1
    if op == "convt":
        _, pid, k, cin, cout, stride, padding, out_pad, bias = node
        return (length - 1) * stride - 2 * padding + k + out_pad
    return length


# ----------------------------------------------------------------------------- noise branch

def noise_frames(noise_spec, length: int) -> int:
    """Number of noise frames the noise net produces for an input of ``length`` steps."""
    return out_length(noise_spec[1], length)


def noise_uniform_shape(noise_spec, batch: int, length: int) -> tuple:
    """Shape of the uniform draws (like torch.rand_like(ir)): (B, frames, bands_out, target)."""
    _, net, n_out, n_bands, target = noise_spec
    return (batch, noise_frames(noise_spec, length), n_out, target)


def amp_to_impulse_response(amp, target_size: int):
    """Zero-phase filter from band amplitudes (last axis), windowed and laid out like RAVE's.

    irfft of the real amplitudes gives a zero-phase response of length n = 2 (bands - 1); it is
    centred, Hann-windowed (periodic window), zero-padded (or cropped) to ``target_size`` and
    rotated back so that its centre is at index 0.
    """
    ir = jnp.fft.irfft(amp.astype(jnp.float32), axis=-1)
    n = ir.shape[-1]
    ir = jnp.roll(ir, n // 2, axis=-1)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    ir = ir * jnp.asarray(win, jnp.float32)
    if target_size >= n:
        ir = jnp.pad(ir, [(0, 0)] * (ir.ndim - 1) + [(0, target_size - n)])
    else:
        ir = ir[..., :target_size]
    ir = jnp.roll(ir, (-n) // 2, axis=-1)
    return ir


def causal_fft_filter(signal, kernel):
    """out[n] = sum_{j<=n} signal[j] kernel[n-j] over the last axis (same length), via FFT."""
    n = signal.shape[-1]
    S = jnp.fft.rfft(signal, 2 * n, axis=-1)
    H = jnp.fft.rfft(kernel, 2 * n, axis=-1)
    return jnp.fft.irfft(S * H, 2 * n, axis=-1)[..., :n]


def apply_noise(noise_spec, x, get: Getter, uniform, policy: Policy = FLOAT32):
    """RAVE noise generator. x (B, T, C) features; uniform (B, F, D, target) in [-1, 1).

    Returns filtered noise (B, F*target, D) in channels-last layout.
    """
    _, net, n_out, n_bands, target = noise_spec
    a = apply_node(net, x, get, policy)             # (B, F, n_out * n_bands)
    amp = mod_sigmoid(a - 5.0)
    B, F, _ = amp.shape
    amp = amp.reshape(B, F, n_out, n_bands)
    ir = amp_to_impulse_response(amp, target)       # (B, F, D, target)
    noise = causal_fft_filter(uniform, ir)           # (B, F, D, target)
    noise = jnp.transpose(noise, (0, 1, 3, 2)).reshape(B, F * target, n_out)
    return noise


def leaves(node):
    """The leaf nodes (conv, convt, activations, ...) of a spec node, in application order."""
    if node[0] in ("seq", "sum"):
        for c in node[1]:
            yield from leaves(c)
    elif node[0] in ("res", "noise"):
        yield from leaves(node[1])
    else:
        yield node
