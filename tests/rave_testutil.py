"""Helpers for the RAVE tests: committed acids-rave exports and their reference decodes."""

from __future__ import annotations

import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rave")
# name -> has a generator noise branch
NAMES = ["v1", "v2", "v2_small", "v3", "v2_causal_noise", "v1_causal"]
NOISY = {"v1": True, "v2": False, "v2_small": True, "v3": False, "v2_causal_noise": True, "v1_causal": True}
# v2-family exports with a NoiseGeneratorV2 have no noise switch: the fixture script also exports
# the same weights without the noise module, the reference for "noise off".
NO_NOISE_TWIN = {"v2_small": "v2_small_nonoise", "v2_causal_noise": "v2_causal_nonoise"}
REF_VENV = os.environ.get("LVNS_REF_VENV", "/work/refvenv")


def ts_path(name: str) -> str:
    return os.path.join(FIXTURES, f"{name}.ts")


def load_ts(name_or_path: str):
    import torch

    path = name_or_path if name_or_path.endswith(".ts") else ts_path(name_or_path)
    return torch.jit.load(path, map_location="cpu")


def ref_decode(model, z: np.ndarray, seed: int | None = None) -> np.ndarray:
    """The export's decode, as (B, S) numpy (both (1, B, S) and (B, 1, S) layouts flattened)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        y = model.decode(torch.from_numpy(np.ascontiguousarray(z, np.float32))).numpy()
    B = z.shape[0]
    if y.ndim == 3 and y.shape[0] == 1 and y.shape[1] == B and B != 1:
        y = y[0]
    return y.reshape(B, -1)


def ref_decode_noise_off(model, z: np.ndarray) -> np.ndarray:
    """Reference decode with both noise sources off.

    * latent completion: pass the latent padded with zeros to the internal size, so the export
      completes it with an empty N(0, 1) draw;
    * noise branch (v1 ``Generator``): set its ``warmed_up`` buffer to 0 (the branch only plays
      once warmed up). v2 ``NoiseGeneratorV2`` has no switch: callers use :func:`replay_draws`.
    """
    full = int(model.full_latent_size)
    B, C, T = z.shape
    zf = np.concatenate([z, np.zeros((B, full - C, T), np.float32)], 1)
    dec = model.decoder
    if dec.original_name == "Generator":
        old = int(dec.warmed_up)
        dec.warmed_up.fill_(0)
        try:
            return ref_decode(model, zf)
        finally:
            dec.warmed_up.fill_(old)
    for n, m in dec.named_modules():
        if m.original_name in ("NoiseGenerator", "NoiseGeneratorV2"):
            raise ValueError("this export's noise branch has no switch; use replay_draws")
    return ref_decode(model, zf)


def replay_draws(decoder, seed: int, B: int, C: int, T: int):
    """The random numbers an export's decode draws after ``torch.manual_seed(seed)``, in order:
    ``torch.randn`` for the latent completion, then ``torch.rand_like`` for the noise branch
    (mapped to [-1, 1) like the export does). Returns (completion or None, uniform or None)."""
    import torch

    from lvns_jax.models.rave.decoder import uniform_shape

    torch.manual_seed(seed)
    comp = torch.randn(B, decoder.full_latent_size - C, T).numpy()
    shape = uniform_shape(decoder.spec, B, T)
    u = None if shape is None else (torch.rand(*shape) * 2 - 1).numpy()
    return (comp if comp.shape[1] else None), u


def boost_noise(model, factor: float):
    """Scale the last conv of the export's noise generator in place (random init leaves the noise
    branch ~100 dB below the signal, under float32 rounding; trained models do not)."""
    import torch

    dec = model.decoder
    if dec.original_name == "Generator":
        noise = list(dict(dec.synth.named_children())["branches"].children())[2]
    else:
        noise = dict(dec.named_children())["noise_module"]
    convs = [m for _, m in noise.named_modules() if m.original_name == "Conv1d"]
    with torch.no_grad():
        convs[-1].weight.mul_(factor)
    return model


def decoder_from_module(model, name="module"):
    """Our decoder converted from an in-memory TorchScript export (e.g. after :func:`boost_noise`)."""
    import jax.numpy as jnp

    from lvns_jax.models.rave.convert import read_ts
    from lvns_jax.models.rave.decoder import RaveDecoder

    spec, params, meta = read_ts(model)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    return RaveDecoder(spec, params, meta, trained=True, description=name)


def rel_err(a, b) -> float:
    a = np.asarray(a)
    b = np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def band_energies_db(x: np.ndarray, n_bands: int = 16) -> np.ndarray:
    """Mean energy (dB) over the first axis in n_bands equal-width frequency bands."""
    X = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    X = X[..., 1:]
    edges = np.linspace(0, X.shape[-1], n_bands + 1).astype(int)
    e = np.stack([X[..., a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])], -1)
    return 10 * np.log10(e.reshape(-1, n_bands).mean(0) + 1e-30)
