"""Convert an acids-rave TorchScript export (``.ts``) to Flax params + meta (needs torch).

The converter reads the scripted module tree (``original_name`` of every submodule, attributes
such as ``_pad``/``stride``/``dilation``, buffers such as ``latent_pca`` and ``decode_params``),
builds the static decoder spec of :mod:`lvns_jax.models.rave.decoder` and copies the weights into
channels-last layout. Weight norm, if still present (``weight_g``/``weight_v``), is folded.
Anything it does not know raises :class:`lvns_jax.errors.WeightsError` naming the module.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lvns_jax.errors import WeightsError
from lvns_jax.models.rave.v1 import Ids

SUPPORTED_EXPORTS = ("VariationalScriptedRAVE", "WasserteinScriptedRAVE")


class _Unsupported(Exception):
    pass


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _attr(mod, name, default=None):
    try:
        return getattr(mod, name)
    except (AttributeError, RuntimeError):
        return default


def _has_child(mod, name) -> bool:
    return name in dict(mod.named_children())


def _own_params(mod) -> dict:
    d = {k: v for k, v in mod.named_parameters(recurse=False)}
    d.update({k: v for k, v in mod.named_buffers(recurse=False)})
    return d


def _folded_weight(mod, where) -> np.ndarray:
    p = _own_params(mod)
    if "weight" in p:
        return _np(p["weight"])
    if "weight_g" in p and "weight_v" in p:  # weight norm, dim=0
        v = _np(p["weight_v"])
        g = _np(p["weight_g"])
        norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
        return (g * v / norm).astype(np.float32)
    raise _Unsupported(f"{where}: {mod.original_name} without a weight")


class _Walker:
    def __init__(self):
        self.ids = Ids()
        self.params: dict[str, np.ndarray] = {}

    def node(self, mod, where: str):
        name = mod.original_name
        children = dict(mod.named_children())
        if name in ("CachedSequential", "Sequential"):
            return ("seq", tuple(self.node(c, f"{where}.{k}") for k, c in children.items()))
        if name == "Conv1d":
            return self.conv(mod, where)
        if name == "ConvTranspose1d":
            return self.convt(mod, where)
        if name == "LeakyReLU":
            return ("lrelu", float(_attr(mod, "negative_slope", 0.01)))
        if name == "Snake":
            pid = self.ids()
            alpha = _np(_own_params(mod)["alpha"]).reshape(-1)
            self.params[f"{pid}_alpha"] = alpha
            return ("snake", pid, int(alpha.shape[0]))
        if name == "AdaptiveInstanceNormalization":
            p = _own_params(mod)
            if float(p["num_update_x"].sum()) and float(p["num_update_y"].sum()):
                raise _Unsupported(f"{where}: AdaptiveInstanceNormalization with learnt style-transfer statistics")
            return ("id",)
        if name == "Identity":
            return ("id",)
        if name == "Residual":
            br = list(dict(mod.aligned.named_children())["branches"].children())
            if len(br) != 2 or br[1].original_name != "Identity":
                raise _Unsupported(f"{where}: Residual with unexpected branches")
            return ("res", self.node(br[0], f"{where}.aligned.branches.0"))
        if name in ("ResidualLayer", "DilatedUnit", "ResidualBlock", "UpsampleLayer"):
            return self.node(mod.net, f"{where}.net")
        if name == "ResidualStack":
            br = list(dict(mod.net.named_children())["branches"].children())
            return ("sum", tuple(self.node(b, f"{where}.net.branches.{i}") for i, b in enumerate(br)))
        raise _Unsupported(f"unsupported RAVE module {name} at {where}")

    def conv(self, mod, where):
        w = _folded_weight(mod, where)                      # (O, I/g, K)
        p = _own_params(mod)
        bias = p.get("bias")
        pad = _attr(mod, "_pad")
        if pad is None:
            pp = _attr(mod, "padding", (0,))
            if isinstance(pp, str):
                raise _Unsupported(f"{where}: Conv1d with padding={pp!r}")
            pad = (int(pp[0]), int(pp[0]))
        elif isinstance(pad, int):
            pad = (pad, pad)
        else:
            pad = (int(pad[0]), int(pad[1]))
        extra = _attr(mod, "padding", (0,))
        if not isinstance(extra, str) and int(extra[0]) != 0:
            pad = (pad[0] + int(extra[0]), pad[1] + int(extra[0]))
        stride = int(_attr(mod, "stride", (1,))[0])
        dil = int(_attr(mod, "dilation", (1,))[0])
        groups = int(_attr(mod, "groups", 1))
        pid = self.ids()
        o, ig, k = w.shape
        self.params[f"{pid}_w"] = np.ascontiguousarray(w.transpose(2, 1, 0))
        if bias is not None:
            self.params[f"{pid}_b"] = _np(bias)
        return ("conv", pid, int(k), int(ig * groups), int(o), stride, dil, groups, pad[0], pad[1], bias is not None)

    def convt(self, mod, where):
        w = _folded_weight(mod, where)                      # (I, O/g, K)
        p = _own_params(mod)
        bias = p.get("bias")
        groups = int(_attr(mod, "groups", 1))
        dil = int(_attr(mod, "dilation", (1,))[0])
        if groups != 1 or dil != 1:
            raise _Unsupported(f"{where}: ConvTranspose1d with groups={groups}, dilation={dil}")
        stride = int(_attr(mod, "stride", (1,))[0])
        padding = int(_attr(mod, "padding", (0,))[0])
        out_pad = int(_attr(mod, "output_padding", (0,))[0])
        pid = self.ids()
        i, o, k = w.shape
        self.params[f"{pid}_w"] = np.ascontiguousarray(w.transpose(2, 0, 1))   # (K, I, O)
        if bias is not None:
            self.params[f"{pid}_b"] = _np(bias)
        return ("convt", pid, int(k), int(i), int(o), stride, padding, out_pad, bias is not None)

    def noise(self, mod, where):
        name = mod.original_name
        if name not in ("NoiseGenerator", "NoiseGeneratorV2"):
            raise _Unsupported(f"unsupported RAVE module {name} at {where}")
        net = self.node(mod.net, f"{where}.net")
        data_size = int(_attr(mod, "data_size"))
        n_ch = int(_attr(mod, "n_channels", 1) or 1)
        n_out = data_size * n_ch
        last = [n for n in _flatten(net) if n[0] == "conv"][-1]
        cout = last[4]
        if cout % n_out:
            raise _Unsupported(f"{where}: noise channels {cout} not a multiple of {n_out}")
        target = int(_own_params(mod)["target_size"])
        return ("noise", net, n_out, cout // n_out, target)

    def generator(self, dec):
        name = dec.original_name
        ch = dict(dec.named_children())
        if name == "Generator":
            net = self.node(dec.net, "decoder.net")
            br = list(dict(dec.synth.named_children())["branches"].children())
            wave = self.node(br[0], "decoder.synth.branches.0")
            loud = self.node(br[1], "decoder.synth.branches.1")
            use_noise = bool(_attr(dec, "use_noise", len(br) > 2))
            noise = self.noise(br[2], "decoder.synth.branches.2") if use_noise and len(br) > 2 else None
            warmed = bool(int(_own_params(dec).get("warmed_up", np.array(1))))
            loud_stride = int(_attr(dec, "loud_stride", 1))
            return ("v1", net, wave, loud, loud_stride, noise, bool(noise is not None and warmed))
        if name == "GeneratorV2":
            net = self.node(dec.net, "decoder.net")
            noise = self.noise(ch["noise_module"], "decoder.noise_module") if "noise_module" in ch else None
            wave = self.node(ch["waveform_module"], "decoder.waveform_module") if "waveform_module" in ch else None
            amp = bool(_attr(dec, "amplitude_modulation", False))
            return ("v2", net, wave, noise, amp)
        raise _Unsupported(f"unsupported RAVE decoder module {name}")


def _flatten(node):
    if node[0] in ("seq", "sum"):
        for c in node[1]:
            yield from _flatten(c)
    elif node[0] == "res":
        yield from _flatten(node[1])
    else:
        yield node


def _out_channels(node, cin):
    c = cin
    for n in _flatten(node):
        if n[0] in ("conv", "convt"):
            c = n[4]
    return c


def _architecture(gen, spec_walk) -> str:
    kinds = {n[0] for n in _flatten(gen[1])}
    if gen[0] == "v1":
        return "v1"
    arch = "v2"
    if "snake" in kinds:
        arch += "+snake"
    if gen[3] is not None:
        arch += "+noise"
    return arch


def read_ts(model) -> tuple[tuple, dict, dict]:
    """Spec, flat params (numpy) and meta from a loaded TorchScript RAVE export."""
    top = model.original_name
    if top not in SUPPORTED_EXPORTS:
        raise _Unsupported(f"unsupported RAVE export {top} (supported: {', '.join(SUPPORTED_EXPORTS)})")
    ch = dict(model.named_children())
    if "decoder" not in ch:
        raise _Unsupported("export has no decoder")
    n_channels = int(_attr(model, "n_channels", 1))
    if n_channels != 1:
        raise _Unsupported(f"multichannel RAVE (n_channels={n_channels})")
    if _attr(model, "resampler") is not None and "resampler" in ch:
        raise _Unsupported("export with a resampler (--sr)")
    w = _Walker()
    gen = w.generator(model.decoder)

    bufs = _own_params(model)
    full = int(_attr(model, "full_latent_size", 0) or 0)
    if "latent_pca" in bufs:
        pca = _np(bufs["latent_pca"])
        mean = _np(bufs["latent_mean"])
        full = full or pca.shape[0]
    else:
        pca = np.eye(full, dtype=np.float32)
        mean = np.zeros(full, np.float32)
    if top == "WasserteinScriptedRAVE":
        # no PCA in its decode: latent + N(0, 1) augmentation channels
        first = [n for n in _flatten(gen[1]) if n[0] == "conv"][0]
        full = first[3]
        pca = np.eye(full, dtype=np.float32)
        mean = np.zeros(full, np.float32)
    latent_size = int(_attr(model, "latent_size"))
    w.params["latent_pca"] = pca
    w.params["latent_mean"] = mean

    pq = ch.get("pqmf")
    data_out = _out_channels(gen[1], 0) if gen[2] is None else gen[2][4]
    if gen[0] == "v2" and gen[4]:
        data_out //= 2
    n_band = 1
    pqmf_spec = (1, 0, 0, 0)
    if pq is not None:
        n_band = int(_attr(pq, "n_band", 1))
        if n_band > 1:
            inv = dict(pq.named_children())["inverse_conv"]
            wt = _np(_own_params(inv)["weight"])                 # (M, M, taps)
            pad = _attr(inv, "_pad")
            pad = (int(pad[0]), int(pad[1]))
            w.params["pqmf_w"] = np.ascontiguousarray(wt.transpose(2, 1, 0))
            pqmf_spec = (n_band, int(wt.shape[-1]), pad[0], pad[1])
    if data_out != n_band:
        raise _Unsupported(f"decoder outputs {data_out} bands but the PQMF has {n_band}")
    dp = _own_params(model).get("decode_params")
    total_ratio = 1
    for n in _flatten(gen[1]):
        if n[0] == "convt":
            total_ratio *= n[5]
        elif n[0] == "conv" and n[5] > 1:
            raise _Unsupported("strided conv in the decoder trunk")
    hop = int(dp[1]) if dp is not None else total_ratio * n_band
    if hop != total_ratio * n_band:
        raise _Unsupported(f"decode ratio {hop} != upsampling {total_ratio} x bands {n_band}")
    spec = ("rave", gen, pqmf_spec, full)
    meta = {
        "kind": "rave",
        "architecture": _architecture(gen, None),
        "export": top,
        "generator": gen[0],
        "sample_rate": int(_attr(model, "sr", 44100)),
        "latent_size": latent_size,
        "full_latent_size": full,
        "hop": hop,
        "n_band": n_band,
        "noise_branch": (gen[5] if gen[0] == "v1" else gen[3]) is not None,
        "spec": spec,
    }
    return spec, w.params, meta


def load_ts(source_path):
    try:
        import torch
    except ImportError:  # pragma: no cover
        raise WeightsError("converting a RAVE .ts needs torch: pip install 'lvns-jax[convert]'") from None
    if not os.path.isfile(source_path):
        raise WeightsError(f"RAVE export not found: {source_path}")
    try:
        return torch.jit.load(os.fspath(source_path), map_location="cpu")
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsError(
            f"{source_path} is not a readable TorchScript RAVE export ({type(e).__name__}: {msg[:200]})") from None


def params_from_ts(source_path):
    """(spec, params, meta) from a ``.ts`` path; WeightsError on corrupt/unsupported files."""
    model = load_ts(source_path)
    try:
        spec, params, meta = read_ts(model)
    except _Unsupported as e:
        raise WeightsError(f"{source_path}: {e}") from None
    except WeightsError:
        raise
    except Exception as e:  # anything structural we did not anticipate
        raise WeightsError(f"{source_path}: cannot read this RAVE export ({type(e).__name__}: {e})") from None
    return spec, params, meta


def convert(source_path, out_dir) -> dict:
    """Convert ``source_path`` (.ts) into ``out_dir`` (orbax params + meta.json); returns meta."""
    from lvns_jax.weights_io import save_params, sha256_of

    spec, params, meta = params_from_ts(source_path)
    meta = dict(meta)
    meta.update({
        "source": os.path.basename(os.fspath(source_path)),
        "sha256": sha256_of(source_path),
        "trained": True,
    })
    save_params(out_dir, params, meta)
    return meta
