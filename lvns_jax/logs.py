"""Run-directory outputs: TensorBoard events (``tensorboard`` package only, no TensorFlow),
a JSON-lines metrics file, and WAV + latent dumps of the container.

Layout of a run directory::

    config.toml          resolved configuration
    run.log              console log
    metrics.jsonl        one JSON object per generation
    tb/                  TensorBoard event files (scalars, histograms, audio)
    audio/gen_XXXX/      NNN.wav of the container (most sparse first), latents.npy, sparseness.npy,
                         embeddings.npy
    checkpoints/         orbax checkpoints

The run directory may be a ``gs://`` URL (:mod:`lvns_jax.storage`): the event files and
``metrics.jsonl`` are then written to a local temporary copy and uploaded at every ``flush()``.
"""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np
import soundfile as sf
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lvns_jax import storage
from lvns_jax.errors import LvnsError


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV, peak-normalised when the signal exceeds [-1, 1] (untrained decoders do)."""
    x = np.nan_to_num(np.asarray(audio, np.float32))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class EventLog:
    """Minimal TensorBoard writer: scalars, histograms and audio, read back by TensorBoard's
    ``event_accumulator``."""

    #: gs:// logdir: a new event file is started once the current one (re-uploaded whole at every
    #: flush) exceeds this size; TensorBoard reads all event files of a folder in order
    ROLL_BYTES = 16 << 20

    def __init__(self, logdir: str):
        self._staged = storage.Staged(logdir, folder=True) if storage.is_remote(logdir) else None
        if self._staged is None:
            os.makedirs(logdir, exist_ok=True)
        self._writer = EventFileWriter(logdir if self._staged is None else self._staged.local)

    def _add(self, value: summary_pb2.Summary.Value, step: int) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=[value]))
        self._writer.add_event(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step)

    def histogram(self, tag: str, values: np.ndarray, step: int, bins: int = 30) -> None:
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        counts, edges = np.histogram(v, bins=bins)
        histo = summary_pb2.HistogramProto(
            min=float(v.min()), max=float(v.max()), num=float(v.size), sum=float(v.sum()),
            sum_squares=float(np.sum(v * v)), bucket_limit=[float(e) for e in edges[1:]],
            bucket=[float(c) for c in counts])
        self._add(summary_pb2.Summary.Value(tag=tag, histo=histo), step)

    def audio(self, tag: str, clip: np.ndarray, sample_rate: int, step: int) -> None:
        clip = np.asarray(clip, np.float32)
        audio = summary_pb2.Summary.Audio(
            sample_rate=float(sample_rate), num_channels=1, length_frames=int(clip.shape[-1]),
            encoded_audio_string=_wav_bytes(clip, sample_rate), content_type="audio/wav")
        self._add(summary_pb2.Summary.Value(tag=tag, audio=audio), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2

        tensor = tensor_pb2.TensorProto(
            dtype=7, string_val=[text.encode()],  # DT_STRING
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        self._add(summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta), step)

    def flush(self) -> None:
        self._writer.flush()
        if self._staged is not None:
            self._staged.sync()
            current = self._writer._file_name
            if os.path.getsize(current) > self.ROLL_BYTES:
                self._writer.close()
                self._staged.sync()
                os.remove(current)
                self._writer = EventFileWriter(self._staged.local)

    def close(self) -> None:
        self._writer.close()
        if self._staged is not None:
            self._staged.close()


class MetricsFile:
    """``metrics.jsonl``: one JSON object per generation, appended and flushed as it comes.

    On resume, lines of generations after the restored one are dropped first, so the file always
    describes one consistent run.
    """

    def __init__(self, path: str, resume_generation: int | None = None):
        self.path = path
        self._staged = storage.Staged(path, fetch=True)  # gs://: a local copy, uploaded by flush()
        local = self._staged.local
        if resume_generation is not None and os.path.exists(local):
            with open(local) as f:
                keep = [line for line in f if line.strip() and json.loads(line)["generation"] <= resume_generation]
            with open(local, "w") as f:
                f.writelines(keep)
        self._f = open(local, "a")

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            self._f.write(json.dumps(clean) + "\n")
            self._f.flush()
        except OSError as e:  # disk full, ...: one line naming the file
            raise LvnsError(f"cannot write {self.path}: {e.strerror or e}") from e

    def flush(self) -> None:
        """Upload the file (gs:// only; a local file is already flushed line by line)."""
        self._f.flush()
        self._staged.sync()

    def close(self) -> None:
        self._f.close()
        self._staged.close()


def read_metrics(path: str) -> list[dict]:
    with storage.open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_generation(directory: str, audio: np.ndarray, sample_rate: int, latents: np.ndarray,
                    sparseness: np.ndarray, embeddings: np.ndarray | None = None,
                    born: np.ndarray | None = None) -> None:
    """Write ``NNN.wav`` (float32, not clipped) for each individual plus ``latents.npy`` and
    ``sparseness.npy``, like the original's per-generation folders, and ``embeddings.npy`` (the
    cached container embeddings, same order; used by ``lvns plot`` for the PCA view) when given.
    ``born`` (when given): ``born.npy``, int32 generation each individual was made in, same order
    (used by ``lvns report``).
    A gs:// ``directory`` gets the same files, uploaded concurrently."""
    if storage.is_remote(directory):
        files = {}
        for i, clip in enumerate(np.asarray(audio, np.float32)):
            buf = io.BytesIO()
            sf.write(buf, clip, sample_rate, subtype="FLOAT", format="WAV")
            files[storage.join(directory, f"{i:03d}.wav")] = buf.getvalue()
        arrays = {"latents": latents, "sparseness": sparseness, "embeddings": embeddings}
        for name, value in arrays.items():
            if value is not None:
                buf = io.BytesIO()
                np.save(buf, np.asarray(value, np.float32))
                files[storage.join(directory, f"{name}.npy")] = buf.getvalue()
        if born is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(born, np.int32))
            files[storage.join(directory, "born.npy")] = buf.getvalue()
        storage.write_files(files)
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise LvnsError(f"cannot create {directory}: {e.strerror or e}") from e
    for i, clip in enumerate(np.asarray(audio, np.float32)):  # encoded in memory: a full disk is an OSError
        buf = io.BytesIO()
        sf.write(buf, clip, sample_rate, subtype="FLOAT", format="WAV")
        _write_file(os.path.join(directory, f"{i:03d}.wav"), buf.getvalue())
    for name, value in (("latents", latents), ("sparseness", sparseness), ("embeddings", embeddings)):
        if value is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(value, np.float32))
            _write_file(os.path.join(directory, f"{name}.npy"), buf.getvalue())
    if born is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(born, np.int32))
        _write_file(os.path.join(directory, "born.npy"), buf.getvalue())


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to a local ``path``; disk full, permission denied, ... -> one-line LvnsError naming it."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise LvnsError(f"cannot write {path}: {e.strerror or e}") from e
