"""``lvns encode``: a folder of audio -> RAVE latents for ``init = "dataset"``.

Encoding is a one-off preprocessing step, so it runs the user's own TorchScript export
(``torch.jit.load(MODEL.ts).encode``; torch comes from the optional ``convert`` extra) instead of a
Flax encoder. Every clip is

1. read with soundfile (``.wav``, ``.flac``, ``.ogg``; the folder is walked recursively, in sorted
   order), files that cannot be read are listed and skipped, never silently dropped;
2. mixed to mono (mean over channels; a warning names the files that were mixed);
3. resampled to the model's rate when it differs (the resampy ``kaiser_best`` resampler of the VGGish
   front end, :func:`lvns_jax.models.vggish.frontend.resample`; a warning names the files);
4. zero-padded to a whole number of latent frames (``hop`` samples each) and encoded one clip at a
   time: ``model.encode(x)`` with ``x`` of shape (1, 1, S) returns (1, C, ceil(S / hop)) in
   acids-rave 2.x exports and in the paper's older v1 exports alike (the (1, B, S) vs (B, 1, S)
   difference of those exports is on the *decode* side). RAVE's encoder samples its posterior
   (``mean + std * noise``), so ``torch.manual_seed(seed + i)`` is set before clip ``i``: the file
   is a pure function of the folder, the model and the seed. Streaming exports (cached
   convolutions) are stateful; their caches are zeroed before every clip, so a clip's latents do
   not depend on the clip encoded before it. ``--sr`` exports take audio at their export rate
   (``sr`` / ``sampling_rate``), which is the rate used here.

The result is saved as ``.npz`` (see :func:`save_npz`): ``latents`` (M, C, T) float32, clips of
different lengths zero-padded at the end, which is exactly how the original LVNS-RAVE pads short
items when it fills the container, so the padding changes nothing; ``lengths`` (M,) the real
number of frames of each clip; ``names`` the source files; ``rave_sha256`` the model's digest.
Saving to ``.h5`` writes the original LVNS-RAVE layout instead (datasets ``"0"``, ``"1"``, ... of
shape (1, C, T_i), unpadded; needs h5py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any, Sequence

import numpy as np

from lvns_jax.errors import LvnsError

log = logging.getLogger("lvns_jax")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_MAX_NAMES_IN_WARNING = 10


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    sample_rate: int
    hop: int | None  # samples per latent frame (None if the export does not say)
    latent_size: int | None
    in_channels: int


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    latents: np.ndarray  # (M, C, T) float32, zero-padded at the end
    lengths: np.ndarray  # (M,) int64, frames of each clip before padding
    names: tuple[str, ...]  # source files, relative to the folder
    skipped: tuple[tuple[str, str], ...]  # (file, reason) of files that could not be encoded
    mixed: tuple[str, ...]  # files with several channels, mixed to mono
    resampled: tuple[tuple[str, int], ...]  # (file, its sample rate) of files resampled
    sample_rate: int
    hop: int | None
    rave_source: str
    rave_sha256: str
    seed: int
    offset: int
    frames: int  # 0 = clips kept at their own length


# ---------------------------------------------------------------------------------------------
# Pure helpers


def find_audio(folder: str) -> list[str]:
    """Audio files under ``folder`` (recursive), as sorted paths relative to it."""
    if not os.path.isdir(folder):
        raise LvnsError(f"audio folder not found: {folder}")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(found)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(S,) or (S, channels) -> (S,) float32, the mean of the channels."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"expected audio of shape (S,) or (S, channels), got {audio.shape}")
    return audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]


def resample(audio: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample a mono clip with the VGGish front end's resampy-``kaiser_best`` resampler.

    That resampler is exact to resampy for any pair of integer rates (tested in
    tests/test_vggish_frontend.py) and needs no new dependency; output length
    ``int(S * sr_to / sr_from)`` as in resampy.
    """
    if sr_from == sr_to:
        return np.asarray(audio, np.float32)
    from lvns_jax.models.vggish.frontend import resample as kaiser_best

    return np.asarray(kaiser_best(np.asarray(audio, np.float32), int(sr_from), int(sr_to)), np.float32)


def fit_clip(z: np.ndarray, offset: int, frames: int) -> np.ndarray:
    """(C, T') -> frames ``[offset:]``, then truncated / zero-padded to ``frames`` (0 = keep length)."""
    z = z[:, offset:]
    if frames:
        z = z[:, :frames]
        if z.shape[1] < frames:
            z = np.pad(z, ((0, 0), (0, frames - z.shape[1])))
    return np.ascontiguousarray(z, np.float32)


def stack_padded(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of (C, T_i) -> ((M, C, max T_i) zero-padded at the end, lengths (M,))."""
    lengths = np.array([c.shape[1] for c in clips], np.int64)
    t = int(lengths.max()) if len(clips) else 0
    out = np.zeros((len(clips), clips[0].shape[0] if clips else 0, t), np.float32)
    for i, c in enumerate(clips):
        out[i, :, : c.shape[1]] = c
    return out, lengths


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_WARNING])
    more = len(names) - _MAX_NAMES_IN_WARNING
    return shown + (f", ... ({more} more)" if more > 0 else "")


# ---------------------------------------------------------------------------------------------
# The model (torch)


def load_model(path: str):
    """``torch.jit.load`` a RAVE export; LvnsError when torch is missing or the file is not one."""
    try:
        import torch
    except ImportError:
        raise LvnsError("lvns encode runs the RAVE export with torch: pip install 'lvns-jax[convert]'") from None
    if not os.path.isfile(path):
        raise LvnsError(f"--rave: RAVE export not found: {path}")
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; RAVE exports are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(os.fspath(path), map_location="cpu")
    except Exception as e:
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise LvnsError(f"--rave: {path} is not a readable TorchScript export ({type(e).__name__}: {msg})") from None
    if not hasattr(model, "encode"):
        raise LvnsError(f"--rave: {path} has no encode method; is it a RAVE export?")
    return model


def model_info(model, sample_rate: int | None = None) -> ModelInfo:
    """Sample rate, hop and latent size from an export's attributes.

    acids-rave 2.x exports carry ``sr`` and ``encode_params = [in_ch, in_ratio, out_ch, out_ratio]``;
    RAVE 1.x exports carry ``sampling_rate`` (and usually ``encode_params``). ``sample_rate`` overrides.
    """
    sr = sample_rate
    if sr is None:
        for name in ("sr", "sampling_rate"):
            v = getattr(model, name, None)
            if v is not None:
                sr = int(v.item() if hasattr(v, "item") else v)
                break
    if sr is None:
        raise LvnsError("the RAVE export does not say its sample rate (no `sr` or `sampling_rate`); "
                        "give it with --sample-rate")
    hop = latent = None
    in_ch = 1
    p = getattr(model, "encode_params", None)
    if p is not None:
        p = [int(x) for x in p.tolist()]
        in_ch, latent, hop = p[0], p[2], p[3] // max(p[1], 1)
    if in_ch != 1:
        raise LvnsError(f"the RAVE export takes {in_ch} audio channels; lvns-jax supports mono models only")
    return ModelInfo(int(sr), hop, latent, in_ch)


def reset_caches(model) -> int:
    """Zero a streaming export's convolution caches (``CachedPadding1d.pad``,
    ``CachedConvTranspose1d.cache``) so that the next call starts from an empty state. Returns how
    many buffers were reset (0 for a non-streaming export)."""
    import torch

    n = 0
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(".pad") or name.endswith(".cache") or name == "cache":
                buf.zero_()
                n += 1
    return n


def encode_clip(model, audio: np.ndarray, hop: int | None, seed: int) -> np.ndarray:
    """Encode one mono clip (S,) -> (C, T') float32 with ``model.encode`` on (1, 1, S).

    Streaming exports are stateful (each call continues from the caches the previous call left);
    their caches are reset first, so a clip's latents never depend on the clip encoded before it
    (they are still causal: delayed by the encoder's latency, like the export's own output)."""
    import torch

    reset_caches(model)
    x = np.asarray(audio, np.float32)
    if hop:
        x = np.pad(x, (0, (-x.shape[0]) % hop))
    torch.manual_seed(seed)
    with torch.inference_mode():
        z = model.encode(torch.from_numpy(np.ascontiguousarray(x)).reshape(1, 1, -1))
    z = z.detach().cpu().numpy()
    if z.ndim == 3 and z.shape[0] == 1:
        z = z[0]
    elif z.ndim == 3 and z.shape[1] == 1:  # a (C, B, T)-style export with B = 1
        z = z[:, 0]
    if z.ndim != 2:
        raise LvnsError(f"the RAVE export's encode returned shape {tuple(z.shape)} for one clip; "
                        "expected (1, C, T)")
    return np.asarray(z, np.float32)


# ---------------------------------------------------------------------------------------------
# The folder


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """(audio (S, channels) float32, sample rate); raises on unreadable or empty files."""
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(audio)):
        raise ValueError("non-finite samples")
    return audio, int(sr)


def encode_folder(folder: str, rave: str, frames: int = 0, offset: int = 0, seed: int = 0,
                  sample_rate: int | None = None, progress: bool = True) -> EncodeResult:
    """Encode every audio file under ``folder`` with the RAVE export ``rave`` (see module doc).

    ``frames`` > 0 fits every clip to that many frames (from frame ``offset``, truncated or
    zero-padded, as the engine does); ``frames`` = 0 keeps each clip from ``offset`` to its end.
    """
    if frames < 0 or offset < 0:
        raise LvnsError(f"--frames and --offset must be >= 0, got {frames} and {offset}")
    files = find_audio(folder)
    if not files:
        raise LvnsError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {folder}")
    from lvns_jax.weights_io import sha256_of

    model = load_model(rave)
    info = model_info(model, sample_rate)
    clips, names, skipped, mixed, resampled = [], [], [], [], []
    channels = None
    from tqdm import tqdm

    for i, name in enumerate(tqdm(files, desc="lvns encode", unit="file", disable=not progress)):
        path = os.path.join(folder, name)
        try:
            audio, sr = read_audio(path)
        except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
            msg = str(e).strip().replace(path, name)
            skipped.append((name, f"unreadable: {type(e).__name__}: {msg[:160]}"))
            continue
        if audio.shape[1] > 1:
            mixed.append(name)
        audio = to_mono(audio)
        if sr != info.sample_rate:
            resampled.append((name, sr))
            audio = resample(audio, sr, info.sample_rate)
            if audio.shape[0] == 0:
                skipped.append((name, f"too short to resample from {sr} Hz"))
                continue
        z = encode_clip(model, audio, info.hop, seed + i)
        if channels is None:
            channels = z.shape[0]
        elif z.shape[0] != channels:
            raise LvnsError(f"{name}: the model returned {z.shape[0]} latent channels, earlier clips had {channels}")
        if not np.all(np.isfinite(z)):
            skipped.append((name, "the model returned non-finite latents"))
            continue
        clip = fit_clip(z, offset, frames)
        if clip.shape[1] == 0:
            skipped.append((name, f"{z.shape[1]} frames, none left after --offset {offset}"))
            continue
        clips.append(clip)
        names.append(name)

    if mixed:
        log.warning("%d file(s) had several channels and were mixed to mono: %s", len(mixed), _name_list(mixed))
    if resampled:
        rates = sorted({r for _, r in resampled})
        log.warning("%d file(s) at %s Hz were resampled to the model's %d Hz: %s", len(resampled),
                    "/".join(map(str, rates)), info.sample_rate, _name_list([n for n, _ in resampled]))
    for name, reason in skipped:
        log.warning("skipped %s: %s", name, reason)
    if not clips:
        raise LvnsError(f"no latents: none of the {len(files)} audio file(s) under {folder} could be encoded "
                        f"({len(skipped)} skipped: {_name_list([f'{n} ({r})' for n, r in skipped])})")
    latents, lengths = stack_padded(clips)
    return EncodeResult(latents=latents, lengths=lengths, names=tuple(names), skipped=tuple(skipped),
                        mixed=tuple(mixed), resampled=tuple(resampled), sample_rate=info.sample_rate,
                        hop=info.hop, rave_source=os.path.basename(rave), rave_sha256=sha256_of(rave),
                        seed=seed, offset=offset, frames=frames)


# ---------------------------------------------------------------------------------------------
# Files


def save_npz(path: str, result: EncodeResult) -> None:
    """Write ``result`` to ``path``: ``.npz`` (default) or the original's ``.h5`` layout."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    meta: dict[str, Any] = {
        "rave_source": np.str_(result.rave_source), "rave_sha256": np.str_(result.rave_sha256),
        "sample_rate": np.int64(result.sample_rate), "hop": np.int64(result.hop or 0),
        "seed": np.int64(result.seed), "offset": np.int64(result.offset), "frames": np.int64(result.frames),
    }
    if path.endswith(".h5"):
        h5py = require_h5py()
        with h5py.File(path, "w") as f:
            for i, n in enumerate(result.lengths):
                f.create_dataset(str(i), data=result.latents[i : i + 1, :, : int(n)])
            for k, v in meta.items():
                f.attrs[k] = v.item()
            f.attrs["names"] = np.array(result.names, dtype=h5py.string_dtype())
        return
    if not path.endswith(".npz"):
        raise LvnsError(f"--out: {path} should end in .npz (or .h5 for the original LVNS-RAVE layout)")
    skipped = np.array([f"{n}\t{r}" for n, r in result.skipped], dtype=np.str_).reshape(-1)
    tmp = path[:-4] + ".partial.npz"
    np.savez(tmp, latents=result.latents, lengths=result.lengths,
             names=np.array(result.names, dtype=np.str_), skipped=skipped, **meta)
    os.replace(tmp, path)


def require_h5py():
    try:
        import h5py
    except ImportError:
        raise LvnsError("reading or writing .h5 latents needs h5py: pip install 'lvns-jax[h5]'") from None
    return h5py


def summary(result: EncodeResult, out: str, rave_path: str) -> str:
    """What was written, what was skipped, and the next two commands."""
    m, c, t = result.latents.shape
    lines = [f"wrote {out}: {m} latents of {c} channels, {int(result.lengths.min())}-{int(result.lengths.max())} "
             f"frames each (stored as (M, C, T) = {result.latents.shape}), encoded by {result.rave_source} "
             f"(sha256 {result.rave_sha256[:12]}...)"]
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} file(s):")
        lines += [f"  {n}: {r}" for n, r in result.skipped]
    frames = f" latent_frames={result.frames}" if result.frames else ""
    lines.append("next (decode with the same model that encoded):\n"
                 f"  lvns convert rave {rave_path} --out weights/rave\n"
                 f"  lvns run init=dataset dataset_path={out} latent_channels={c} rave=weights/rave{frames}")
    return "\n".join(lines)
