"""Flax RAVE decoder: export latent post-processing + generator (v1 or v2 family) + PQMF.

The whole model is described by a static spec (see :mod:`lvns_jax.models.rave.blocks`)::

    ("rave", gen, pqmf, full_latent_size)
    gen  = ("v1", net, wave, loud, loud_stride, noise, noise_active)     # blocks.Generator
         | ("v2", net, wave_or_None, noise_or_None, amplitude_modulation) # blocks.GeneratorV2
    noise = ("noise", net, n_out, n_bands, target_size)
    pqmf = (n_band, taps, pad_left, pad_right)           # n_band 1: no multiband synthesis

Params (flat): the generator's ``L<i>_*`` weights, ``latent_pca`` (F, F), ``latent_mean`` (F,),
``pqmf_w`` (taps, M, M).

What ``decode(z, key)`` reproduces from an acids-rave export's ``decode`` (VariationalScriptedRAVE):
the user latent (B, C_user, T) is completed to the internal size F with N(0, 1) draws, rotated
back with the PCA (``z_full = latent_pca^T z + latent_mean``), decoded, synthesised by the
PQMF and cropped to T * hop samples. With ``noise=False`` both random sources are zero: the
completion is zeros and the generator's noise branch is skipped.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax.models import precision as _precision
from lvns_jax.models.rave import blocks
from lvns_jax.models.rave.pqmf import pqmf_inverse

log = logging.getLogger(__name__)


def to_tuple(x):
    """JSON lists -> nested tuples (hashable spec)."""
    if isinstance(x, (list, tuple)):
        return tuple(to_tuple(v) for v in x)
    return x


def _const_init(value):
    value = np.asarray(value, np.float32)

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(value, dtype).reshape(shape)

    return init


def gen_out_length(gen, T: int) -> int:
    return blocks.out_length(gen[1], T)


class RaveModule(nn.Module):
    """Flax module. Call with z (B, C, T) channels-first (like the .ts) and explicit randomness.
    ``policy``: matmul precision of the generator's convolutions (:mod:`lvns_jax.models.precision`);
    the latent PCA and the PQMF synthesis stay float32 (tiny, and they set the output's accuracy)."""

    spec: tuple
    policy: _precision.Policy = _precision.FLOAT32

    @nn.compact
    def __call__(self, z, completion=None, uniform=None, noise: bool = False):
        _, gen, pqmf, full = self.spec
        B, C, T = z.shape
        get = lambda name, shape, init: self.param(name, init, shape)
        p = self.policy
        p32 = _precision.FLOAT32 if p.bf16 else p  # PCA, PQMF: float32 (or the backend default)

        pca = self.param("latent_pca", _const_init(np.eye(full)), (full, full))
        mean = self.param("latent_mean", nn.initializers.zeros, (full,))
        z = jnp.transpose(z.astype(jnp.float32), (0, 2, 1))          # (B, T, C)
        if C < full:
            if completion is None:
                completion = jnp.zeros((B, full - C, T), jnp.float32)
            z = jnp.concatenate([z, jnp.transpose(completion, (0, 2, 1))], axis=-1)
        elif C > full:
            raise ValueError(f"latent has {C} channels, the model takes at most {full}")
        # conv1d with latent_pca^T: z_full[i] = sum_j pca[j, i] z[j]
        x = jnp.einsum("btj,ji->bti", z, pca, precision=p32.lax_precision) + mean

        kind = gen[0]
        if kind == "v1":
            _, net, wave, loud, loud_stride, noise_spec, noise_active = gen
            h = blocks.apply_node(net, x, get, p)
            w = blocks.apply_node(wave, h, get, p)
            l = blocks.apply_node(loud, h, get, p)
            if loud_stride != 1:
                l = jnp.repeat(l, loud_stride, axis=1)
            y = jnp.tanh(w) * blocks.mod_sigmoid(l)
            if noise_spec is not None:
                # create the noise params even when the branch is off (stable param tree)
                u = uniform if (noise and noise_active) else jnp.zeros(
                    blocks.noise_uniform_shape(noise_spec, B, h.shape[1]), jnp.float32)
                n = blocks.apply_noise(noise_spec, h, get, u, p)
                if noise and noise_active:
                    y = y + n
        elif kind == "v2":
            _, net, wave, noise_spec, amp_mod = gen
            h = blocks.apply_node(net, x, get, p)
            n = 0.0
            if noise_spec is not None:
                u = uniform if noise else jnp.zeros(
                    blocks.noise_uniform_shape(noise_spec, B, h.shape[1]), jnp.float32)
                nn_out = blocks.apply_noise(noise_spec, h, get, u, p)
                if noise:
                    n = nn_out
            y = blocks.apply_node(wave, h, get, p) if wave is not None else h
            if amp_mod:
                half = y.shape[-1] // 2
                y = y[..., :half] * jax.nn.sigmoid(y[..., half:])
            y = jnp.tanh(y + n)
        else:
            raise ValueError(f"unknown generator kind {kind!r}")

        n_band, taps, pl, pr = pqmf
        if n_band > 1:
            from lvns_jax.models.rave.pqmf import synthesis_weight

            pw = self.param("pqmf_w", lambda k, s, d=jnp.float32: jnp.asarray(synthesis_weight(n_band)),
                            (taps, n_band, n_band))
            audio = pqmf_inverse(y, pw, (pl, pr), p32)
        else:
            audio = y[..., 0]
        return audio


def uniform_shape(spec, batch: int, T: int):
    """Shape of the generator's uniform noise draws for a latent of T frames, or None."""
    _, gen, _, _ = spec
    noise_spec = gen[5] if gen[0] == "v1" else gen[3]
    if noise_spec is None:
        return None
    h_len = blocks.out_length(gen[1], T)
    return blocks.noise_uniform_shape(noise_spec, batch, h_len)


class RaveDecoder:
    """A RAVE decoder with its params: ``decode(z, key=None, noise=True) -> (B, T*hop)``."""

    def __init__(self, spec, params, meta: dict, trained: bool, description: str):
        self.spec = to_tuple(spec)
        self.module = RaveModule(self.spec)
        self._modules = {}
        self.params = params
        self.meta = dict(meta)
        self.trained = bool(trained)
        self.description = description
        self.sample_rate = int(meta["sample_rate"])
        self.latent_size = int(meta["latent_size"])
        self.full_latent_size = int(self.spec[3])
        self.hop = int(meta["hop"])
        self.architecture = meta.get("architecture", "?")
        self._jitted = {}

    def __repr__(self):
        return f"<RaveDecoder {self.description}: latent {self.latent_size}/{self.full_latent_size}, hop {self.hop}, {self.sample_rate} Hz>"

    @property
    def has_noise_branch(self) -> bool:
        return uniform_shape(self.spec, 1, 1) is not None

    # -------------------------------------------------------------- pure functions
    def module_for(self, policy: _precision.Policy | None = None) -> RaveModule:
        """The Flax module computing under ``policy`` (default float32)."""
        if policy is None or policy == self.module.policy:
            return self.module
        if policy not in self._modules:
            self._modules[policy] = RaveModule(self.spec, policy)
        return self._modules[policy]

    def apply(self, params, z, completion=None, uniform=None, noise: bool = False,
              policy: _precision.Policy | None = None):
        """Pure decode with explicit randomness (completion (B, F-C, T), uniform in [-1, 1));
        ``policy``: matmul precision (:mod:`lvns_jax.models.precision`, default float32)."""
        T = z.shape[-1]
        out = self.module_for(policy).apply({"params": params}, z, completion, uniform, noise)
        return out[:, : T * self.hop]

    def draw_noise(self, key, z_shape):
        """The two random inputs of a noisy decode: latent completion and generator noise."""
        B, C, T = z_shape
        k1, k2 = jax.random.split(key)
        completion = None
        if C < self.full_latent_size:
            completion = jax.random.normal(k1, (B, self.full_latent_size - C, T), jnp.float32)
        shape = uniform_shape(self.spec, B, T)
        uniform = None if shape is None else jax.random.uniform(k2, shape, jnp.float32, -1.0, 1.0)
        return completion, uniform

    def decode_fn(self, noise: bool = True, params=None, policy: _precision.Policy | None = None):
        """Pure ``f(z (B, C, T), key) -> (B, T*hop)`` closed over params; traceable inside jit/scan.

        With ``noise=False`` the key is ignored (may be None). ``policy``: matmul precision.
        """
        params = self.params if params is None else params

        def f(z, key=None):
            if noise:
                completion, uniform = self.draw_noise(key, z.shape)
                return self.apply(params, z, completion, uniform, True, policy)
            return self.apply(params, z, None, None, False, policy)

        return f

    def pure_decode(self, noise: bool = True, policy: _precision.Policy | None = None):
        """Pure ``f(params, z (B, C, T), key) -> (B, T*hop)`` (params passed in, not baked in);
        ``policy``: matmul precision (:mod:`lvns_jax.models.precision`, default float32)."""

        def f(params, z, key=None):
            return self.decode_fn(noise, params, policy)(z, key)

        return f

    def decode(self, z, key=None, noise: bool = True):
        """Decode user latents (B, C_user, T) (or (C_user, T)) to float32 audio (B, T*hop).

        ``noise=True`` needs a ``jax.random`` key (completion of the latent and noise branch).
        """
        z = jnp.asarray(z, jnp.float32)
        if z.ndim == 2:
            z = z[None]
        if z.ndim != 3:
            raise ValueError(f"z must be (B, C, T), got shape {z.shape}")
        if z.shape[1] > self.full_latent_size:
            raise ValueError(f"z has {z.shape[1]} latent channels, this model takes at most {self.full_latent_size}")
        if noise and key is None:
            raise ValueError("decode(..., noise=True) needs a jax.random key; pass key=... or noise=False")
        if noise not in self._jitted:
            self._jitted[noise] = jax.jit(lambda p, z, k: self.decode_fn(noise, p)(z, k))
        return self._jitted[noise](self.params, z, key)


def init_params(spec, seed: int = 0) -> dict:
    """Random params for a spec without tracing the network (fast, deterministic in ``seed``).

    Convs get PyTorch's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weight norm leaves the
    initial weight unchanged); Snake alphas 1; PCA identity, mean 0, PQMF filters designed.
    """
    spec = to_tuple(spec)
    _, gen, pqmf, full = spec
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}

    def visit(node):
        op = node[0]
        if op in ("seq", "sum"):
            for c in node[1]:
                visit(c)
        elif op == "res":
            visit(node[1])
        elif op == "noise":
            visit(node[1])
        elif op == "conv":
            _, pid, k, cin, cout, stride, dil, groups, pl, pr, bias = node
            bound = 1.0 / np.sqrt(cin // groups * k)
            params[f"{pid}_w"] = rng.uniform(-bound, bound, (k, cin // groups, cout)).astype(np.float32)
            if bias:
                params[f"{pid}_b"] = rng.uniform(-bound, bound, (cout,)).astype(np.float32)
        elif op == "convt":
            _, pid, k, cin, cout, stride, padding, out_pad, bias = node
            bound = 1.0 / np.sqrt(cout * k)
            params[f"{pid}_w"] = rng.uniform(-bound, bound, (k, cin, cout)).astype(np.float32)
            if bias:
                params[f"{pid}_b"] = rng.uniform(-bound, bound, (cout,)).astype(np.float32)
        elif op == "snake":
            params[f"{node[1]}_alpha"] = np.ones((node[2],), np.float32)

    if gen[0] == "v1":
        _, net, wave, loud, _, noise, _ = gen
        for n in (net, wave, loud, noise):
            if n is not None:
                visit(n)
    else:
        _, net, wave, noise, _ = gen
        for n in (net, noise, wave):
            if n is not None:
                visit(n)
    params["latent_pca"] = np.eye(full, dtype=np.float32)
    params["latent_mean"] = np.zeros((full,), np.float32)
    if pqmf[0] > 1:
        from lvns_jax.models.rave.pqmf import synthesis_weight

        params["pqmf_w"] = synthesis_weight(pqmf[0])
    return {k: jnp.asarray(v) for k, v in params.items()}


def build_untrained(spec, meta: dict, seed: int, description: str) -> RaveDecoder:
    params = init_params(spec, seed)
    return RaveDecoder(spec, params, meta, trained=False, description=description)
