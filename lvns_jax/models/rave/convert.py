"""Convert a RAVE TorchScript export (``.ts``) of any generation to Flax params + meta (needs torch).

The converter reads the scripted module tree (``original_name`` of every submodule, attributes
such as ``_pad``/``stride``/``dilation``/``cumulative_delay``, buffers such as ``latent_pca`` and
``decode_params``), builds the static decoder spec of :mod:`lvns_jax.models.rave.decoder` and copies
the weights into channels-last layout. Weight norm, if still present (``weight_g``/``weight_v``), is
folded. Anything it does not know raises :class:`lvns_jax.errors.WeightsError` naming the module.

Generations (see weights/README.md for the table "what you hold -> what happens"):

* v1-era ``TraceModel`` (RAVE 1.0, the 2022 master, tag ``v1``): residual stacks are *sequences*
  of residuals; the rate is the ``sampling_rate`` buffer (the resampler's ``source_sr`` when the
  export resamples), the user latent size ``cropped_latent_size`` and the internal size the
  ``latent_size`` buffer; ``trained_cropped`` models apply their (crop x crop) PCA *before* the
  zero/noise padding, which we express as a block-diagonal PCA.
* acids-rave 2.x ``VariationalScriptedRAVE`` (v2.0 to 2.3): residual stacks are sums of branches.
* Streaming exports (``CachedConv1d``, ``CachedConvTranspose1d``, ``AlignBranches``): converted to
  the model as trained, offline. A cached conv keeps only its total padding (``cache.padding``);
  the split into left/right is recovered from its ``cumulative_delay`` (for the decoder's first
  conv and the PQMF, which are built with no incoming delay, it is the right padding itself),
  which tells whether the model was trained with centred or causal padding. Branch-alignment
  delays and the strided convs' phase delays exist only to make the model causal: dropped.
* ``--sr`` exports: we decode at the model's own rate; the export's output rate is recorded as
  ``export_sample_rate`` (VGGish resamples to 16 kHz anyway).
* Stereo exports (v1-era ``--stereo``, 2.0-2.2 ``--stereo``): the same mono model decoded twice
  with independent noise; we decode one channel (see :mod:`lvns_jax.models.rave`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lvns_jax.errors import WeightsError
from lvns_jax.models.rave.v1 import Ids

SUPPORTED_EXPORTS = ("VariationalScriptedRAVE", "WasserteinScriptedRAVE", "TraceModel")
# exports we recognise and refuse on purpose: name -> reason
REFUSED_EXPORTS = {
    "DiscreteScriptedRAVE": "a discrete (RVQ) RAVE export: its latent is codebook indices, not a continuous vector that crossover and mutation can act on",
    "SphericalScriptedRAVE": "a spherical-latent RAVE export (not supported yet)",
}


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
    """Walks a decoder module tree into a spec. ``mode`` is the padding the model was trained
    with ("centered" | "causal"); it only matters for cached (streaming) convolutions, whose
    offline padding is not stored as such."""

    def __init__(self, mode: str = "centered"):
        self.ids = Ids()
        self.params: dict[str, np.ndarray] = {}
        self.mode = mode
        self.explicit_left = 0   # > 0 inside NoiseGeneratorV2: its convs have explicit (P, 0) padding

    def node(self, mod, where: str):
        name = mod.original_name
        children = dict(mod.named_children())
        if name in ("CachedSequential", "Sequential"):
            return ("seq", tuple(self.node(c, f"{where}.{k}") for k, c in children.items()))
        if name in ("Conv1d", "CachedConv1d"):
            return self.conv(mod, where)
        if name in ("ConvTranspose1d", "CachedConvTranspose1d"):
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
            br = _branches(mod.aligned, f"{where}.aligned")
            if len(br) != 2 or br[1].original_name != "Identity":
                raise _Unsupported(f"{where}: Residual with unexpected branches")
            return ("res", self.node(br[0], f"{where}.aligned.branches.0"))
        if name in ("ResidualLayer", "DilatedUnit", "ResidualBlock", "UpsampleLayer"):
            return self.node(mod.net, f"{where}.net")
        if name == "ResidualStack":
            net = mod.net
            if net.original_name in ("AlignBranches", "Branches"):   # 2.x: a sum of parallel blocks
                br = _branches(net, f"{where}.net")
                return ("sum", tuple(self.node(b, f"{where}.net.branches.{i}") for i, b in enumerate(br)))
            return self.node(net, f"{where}.net")                      # v1-era: residuals in sequence
        raise _Unsupported(f"unsupported RAVE module {name} at {where}")

    def _cached_pad(self, mod, where):
        """Offline (left, right) padding of a CachedConv1d (see the module docstring)."""
        cache = dict(mod.named_children()).get("cache")
        if cache is None:
            raise _Unsupported(f"{where}: CachedConv1d without a cache")
        total = _attr(cache, "padding")
        if total is None:
            total = int(_own_params(cache)["pad"].shape[-1])
        total = int(total)
        if self.explicit_left:
            return (total, 0)
        if self.mode == "causal":
            return (total, 0)
        return (total // 2, total - total // 2)

    def conv(self, mod, where):
        w = _folded_weight(mod, where)                      # (O, I/g, K)
        p = _own_params(mod)
        bias = p.get("bias")
        if mod.original_name == "CachedConv1d":
            pad = self._cached_pad(mod, where)
        else:
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
        # CachedConvTranspose1d keeps the offline padding as its attribute (it crops 2*padding
        # on the right after an overlap-add with its cache: the offline result delayed by padding)
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
        if name == "NoiseGeneratorV2":
            self.explicit_left += 1
        try:
            net = self.node(mod.net, f"{where}.net")
        finally:
            if name == "NoiseGeneratorV2":
                self.explicit_left -= 1
        data_size = int(_attr(mod, "data_size"))
        n_ch = int(_attr(mod, "n_channels", 1) or 1)
        n_out = data_size * n_ch
        last = [n for n in _flatten(net) if n[0] == "conv"][-1]
        cout = last[4]
        if cout % n_out:
            raise _Unsupported(f"{where}: noise channels {cout} not a multiple of {n_out}")
        target = int(_own_params(mod)["target_size"])
        return ("noise", net, n_out, cout // n_out, target)

    def generator(self, dec, noise_default: bool = True):
        name = dec.original_name
        ch = dict(dec.named_children())
        if name == "Generator":
            net = self.node(dec.net, "decoder.net")
            br = _branches(dec.synth, "decoder.synth")
            wave = self.node(br[0], "decoder.synth.branches.0")
            loud = self.node(br[1], "decoder.synth.branches.1")
            use_noise = bool(_attr(dec, "use_noise", len(br) > 2))
            noise = self.noise(br[2], "decoder.synth.branches.2") if use_noise and len(br) > 2 else None
            # 2.x: the branch plays once `warmed_up`; v1-era exports have no such buffer (always on)
            warmed = bool(int(_own_params(dec).get("warmed_up", np.array(int(noise_default)))))
            loud_stride = int(_attr(dec, "loud_stride", 1))
            return ("v1", net, wave, loud, loud_stride, noise, bool(noise is not None and warmed))
        if name == "GeneratorV2":
            net = self.node(dec.net, "decoder.net")
            noise = self.noise(ch["noise_module"], "decoder.noise_module") if "noise_module" in ch else None
            wave = self.node(ch["waveform_module"], "decoder.waveform_module") if "waveform_module" in ch else None
            amp = bool(_attr(dec, "amplitude_modulation", False))
            return ("v2", net, wave, noise, amp)
        raise _Unsupported(f"unsupported RAVE decoder module {name}")


def _branches(mod, where):
    """The parallel branches of an AlignBranches / Branches module (delay lines ignored)."""
    ch = dict(mod.named_children())
    if "branches" not in ch:
        raise _Unsupported(f"{where}: {mod.original_name} without branches")
    return list(ch["branches"].children())


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


CACHED_MODULES = ("CachedConv1d", "CachedConvTranspose1d", "CachedPadding1d")


def _first_conv(mod):
    for _, m in mod.named_modules():
        if m.original_name in ("Conv1d", "CachedConv1d"):
            return m
    return None


def _padding_mode(dec) -> str:
    """"centered" or "causal": how a streaming export's model was padded when it was trained.

    The decoder's first conv is built with no incoming delay, so its ``cumulative_delay`` is its
    right padding: half of its cache for a centred model, 0 for a causal one."""
    first = _first_conv(dec.net)
    if first is None or first.original_name != "CachedConv1d":
        return "centered"
    total = int(_attr(dict(first.named_children())["cache"], "padding", 0))
    right = int(_attr(first, "cumulative_delay", -1))
    if total == 0 or right == total - total // 2:
        return "centered"
    if right == 0:
        return "causal"
    raise _Unsupported(f"cached conv decoder.net.0: right padding {right} of {total} is neither centred nor causal")


def generation(model) -> str:
    """The RAVE export generation of a loaded TorchScript file (best effort, for summaries)."""
    top = model.original_name
    if top == "TraceModel":
        if _attr(model, "deterministic") is None:
            return "v1-era (RAVE 1.0)"
        if "max_batch_size" in _own_params(model):
            return "v1-era (tag v1, 2022-06)"
        return "v1-era (2022 master)"
    if top in SUPPORTED_EXPORTS or top in REFUSED_EXPORTS:
        methods = set(model._c._method_names())
        if _attr(model, "n_channels") is not None or "set_stereo_mode" in methods:
            return "acids-rave 2.3"
        return "acids-rave 2.0-2.2"
    return "not a RAVE export"


def _pqmf(w, pq, mode):
    """(n_band, taps, pad_left, pad_right) of the PQMF synthesis; its weight goes into w.params."""
    if pq is None:
        return 1, (1, 0, 0, 0)
    n_band = int(_attr(pq, "n_band", 1))
    if n_band <= 1:
        return 1, (1, 0, 0, 0)
    inv = dict(pq.named_children()).get("inverse_conv")
    if inv is None:
        raise _Unsupported(f"PQMF {pq.original_name} without an inverse_conv")
    wt = _np(_own_params(inv)["weight"])                 # (M, M, taps)
    if inv.original_name == "CachedConv1d":
        total = int(_attr(dict(inv.named_children())["cache"], "padding"))
        right = int(_attr(inv, "cumulative_delay", total // 2))   # built with no incoming delay
        pad = (total - right, right)
    else:
        pad = _attr(inv, "_pad")
        pad = (int(pad[0]), int(pad[1]))
    w.params["pqmf_w"] = np.ascontiguousarray(wt.transpose(2, 1, 0))
    return n_band, (n_band, int(wt.shape[-1]), pad[0], pad[1])


def read_ts(model) -> tuple[tuple, dict, dict]:
    """Spec, flat params (numpy) and meta from a loaded TorchScript RAVE export."""
    top = model.original_name
    if top in REFUSED_EXPORTS:
        raise _Unsupported(f"{REFUSED_EXPORTS[top]} (found {top}; supported: {', '.join(SUPPORTED_EXPORTS)})")
    if top not in SUPPORTED_EXPORTS:
        raise _Unsupported(f"unsupported RAVE export {top} (supported: {', '.join(SUPPORTED_EXPORTS)})")
    ch = dict(model.named_children())
    if "decoder" not in ch:
        raise _Unsupported("export has no decoder")
    n_channels = int(_attr(model, "n_channels", 1))
    if n_channels != 1:
        raise _Unsupported(f"a multichannel RAVE (n_channels={n_channels}: trained on {n_channels}-channel audio) "
                           "is not supported yet; mono models and --stereo exports are")
    dec = model.decoder
    streaming = any(m.original_name == "CachedConv1d" for _, m in model.named_modules())
    mode = _padding_mode(dec) if streaming else "centered"
    w = _Walker(mode)
    gen = w.generator(dec)
    bufs = _own_params(model)
    stereo = bool(_attr(model, "stereo", False))

    if top == "TraceModel":
        # v1-era: `latent_size` buffer = INTERNAL size, `cropped_latent_size` = user size
        full = int(bufs["latent_size"])
        latent_size = int(_attr(model, "cropped_latent_size"))
        pca = _np(bufs["latent_pca"])
        mean = _np(bufs["latent_mean"])
        trained_cropped = bool(_attr(model, "trained_cropped", False))
        if trained_cropped:
            # PCA (crop x crop) applied BEFORE the padding: block-diagonal with an identity for the rest
            c = pca.shape[0]
            pf = np.eye(full, dtype=np.float32)
            pf[:c, :c] = pca
            mf = np.zeros(full, np.float32)
            mf[:c] = mean
            pca, mean = pf, mf
        rs = ch.get("resample")
        export_sr = int(bufs["sampling_rate"])
        model_sr = export_sr
        if rs is not None and not bool(_attr(rs, "identity", True)):
            model_sr = int(_attr(rs, "source_sr"))
        det = _attr(model, "deterministic")
        noise_switch = "deterministic attribute" if det is not None else "none (RAVE 1.0: noise always on)"
        export_noise = "on" if not det else "off (exported --deterministic true)"
    else:
        trained_cropped = False
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
        export_sr = int(_attr(model, "sr", 44100))
        model_sr = export_sr
        rs = ch.get("resampler")
        if rs is not None:
            model_sr = int(_attr(rs, "model_sr"))
        if gen[0] == "v1":
            noise_switch = "decoder.warmed_up buffer"
        elif gen[3] is not None:
            noise_switch = "none in the export (GeneratorV2 noise module)"
        else:
            noise_switch = "no noise branch"
        export_noise = "on" if (gen[0] == "v1" and gen[6]) or (gen[0] == "v2" and gen[3] is not None) else "off"
    if latent_size > full:
        raise _Unsupported(f"user latent size {latent_size} > internal latent size {full}")
    w.params["latent_pca"] = pca
    w.params["latent_mean"] = mean

    data_out = _out_channels(gen[1], 0) if gen[2] is None else gen[2][4]
    if gen[0] == "v2" and gen[4]:
        data_out //= 2
    n_band, pqmf_spec = _pqmf(w, ch.get("pqmf"), mode)
    if data_out != n_band:
        raise _Unsupported(f"decoder outputs {data_out} bands but the PQMF has {n_band}")
    total_ratio = 1
    for n in _flatten(gen[1]):
        if n[0] == "convt":
            total_ratio *= n[5]
        elif n[0] == "conv" and n[5] > 1:
            raise _Unsupported("strided conv in the decoder trunk")
    hop = total_ratio * n_band
    dp = bufs.get("decode_params")
    export_hop = int(dp[1]) if dp is not None else hop
    if export_sr % model_sr or export_hop * model_sr != hop * export_sr:
        raise _Unsupported(f"decode ratio {export_hop} at {export_sr} Hz != upsampling {total_ratio} x bands "
                           f"{n_band} at the model's {model_sr} Hz")
    spec = ("rave", gen, pqmf_spec, full)
    noise_branch = (gen[5] if gen[0] == "v1" else gen[3]) is not None
    meta = {
        "kind": "rave",
        "architecture": _architecture(gen, None),
        "export": top,
        "generation": generation(model),
        "generator": gen[0],
        "streaming": streaming,
        "padding": mode if streaming else "as exported",
        "sample_rate": model_sr,
        "export_sample_rate": export_sr,
        "latent_size": latent_size,
        "full_latent_size": full,
        "trained_cropped": trained_cropped,
        "hop": hop,
        "export_hop": export_hop,
        "n_band": n_band,
        "export_channels": 2 if stereo else 1,
        "noise_branch": noise_branch,
        "noise_switch": noise_switch,
        "export_noise": export_noise,
        "spec": spec,
    }
    return spec, w.params, meta


def summary(meta: dict, path: str = "") -> str:
    """What `lvns inspect` / `lvns convert rave` print about an export (a few lines)."""
    lines = [f"{path or meta.get('source', '')}: RAVE {meta['generation']} export ({meta['export']}), "
             f"{'streaming (cached convolutions)' if meta['streaming'] else 'non-streaming'}"]
    sr = f"{meta['sample_rate']} Hz"
    if meta["export_sample_rate"] != meta["sample_rate"]:
        sr += f" (the export resamples to {meta['export_sample_rate']} Hz: we decode at the model's rate)"
    lines.append(f"  sample rate {sr}; hop {meta['hop']} samples per latent frame")
    lines.append(f"  latent: {meta['latent_size']} user dimensions of {meta['full_latent_size']} internal"
                 + (" (trained cropped: PCA before padding)" if meta.get("trained_cropped") else ""))
    lines.append(f"  decoder: {meta['architecture']} ({meta['generator']} generator, {meta['n_band']} PQMF bands)"
                 + ("; noise branch" if meta["noise_branch"] else "; no noise branch")
                 + f"; noise switch: {meta['noise_switch']}")
    ch = meta["export_channels"]
    lines.append(f"  channels: {ch}" + (" (stereo export: the same mono model decoded twice with independent "
                                        "noise; lvns decodes one channel)" if ch == 2 else ""))
    how = "converts"
    if meta["streaming"]:
        how += (f" to the model as trained (offline, {meta['padding']} padding recovered from the caches); "
                "output is not delayed and has no warm-up")
    lines.append(f"  lvns: {how}")
    return "\n".join(lines)


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


def inspect(source_path) -> tuple[str, bool]:
    """(summary text, converts?) for a ``.ts`` without converting; WeightsError if unreadable."""
    model = load_ts(source_path)
    try:
        _, _, meta = read_ts(model)
    except _Unsupported as e:
        gen = generation(model)
        head = f"{source_path}: {'RAVE ' + gen + ' export' if gen != 'not a RAVE export' else gen} " \
               f"({model.original_name})"
        return f"{head}\n  lvns: does not convert: {e}", False
    except Exception as e:
        return f"{source_path}: cannot read this RAVE export ({type(e).__name__}: {e})", False
    return summary(meta, os.fspath(source_path)), True


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
