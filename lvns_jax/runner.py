"""Host side of a run: blocks of compiled generations, with logging, audio, checkpoints between them.

Blocks end on a fixed grid of generations (multiples of ``scan_length`` and of every nonzero
``checkpoint_every`` / ``save_every`` / ``audio_every``, and the last generation), computed from the
absolute generation number. A resumed run therefore compiles and runs exactly the same blocks as
an uninterrupted one and gives bit-identical results.

Ctrl-C / SIGTERM: the block in flight finishes, a checkpoint is written, and the run stops
(:class:`Interrupted`). Any other exception also writes a checkpoint of the last finished block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config as config_lib
from lvns_jax import distributed, knn_incremental, logs, search
from lvns_jax.checkpoint import Checkpoints
from lvns_jax.errors import LvnsError
from lvns_jax.models import Models

log = logging.getLogger("lvns_jax")

#: keys that may change when resuming (everything else must match the checkpointed run)
RESUMABLE_KEYS = ("generations", "scan_length", "checkpoint_every", "keep_checkpoints", "save_every",
                  "audio_every", "audio_count", "progress", "chunk_size", "knn_chunk", "knn", "knn_width", "devices",
                  "multihost")


class Interrupted(LvnsError):
    """The run was stopped by a signal after writing a checkpoint."""


def next_stop(gen: int, cfg: config_lib.Config) -> int:
    """First generation after ``gen`` at which the host must act (log/save/checkpoint/end)."""
    stops = [cfg.generations]
    for every in (cfg.scan_length, cfg.checkpoint_every, cfg.save_every, cfg.audio_every):
        if every > 0:
            stops.append((gen // every + 1) * every)
    return min(s for s in stops if s > gen)


def tb_tag(metric: str) -> str:
    """TensorBoard tag of a per-generation metric (every metric the step returns is logged)."""
    if metric.startswith("sparseness_"):
        return f"container/{metric}"
    if metric.startswith("children_"):
        return f"children/{metric[len('children_'):]}"
    if metric in ("new_survivors", "invalid_children"):
        return f"selection/{metric}"
    if metric in ("individuals_per_second", "step_seconds"):
        return f"perf/{metric}"
    if metric.startswith("gradient_"):
        return f"gradient/{metric[len('gradient_'):]}"
    return f"search/{metric}"


def _template(cfg: config_lib.Config, models: Models) -> search.SearchState:
    n, c, t = cfg.container_size, cfg.latent_channels, cfg.latent_frames
    d = models.embedding_dim(t)
    return search.SearchState(
        key=jax.random.key(0), generation=jnp.int32(0), latents=jnp.zeros((n, c, t)),
        embeddings=jnp.zeros((n, d)), sparseness=jnp.zeros((n,)), born=jnp.zeros((n,), jnp.int32),
        invalid_total=jnp.int32(0), models=models, config=cfg)


def decode_audio(models: Models, latents: np.ndarray, key: jax.Array, chunk: int) -> np.ndarray:
    """Decode latents to audio on the host side (for WAV files / TensorBoard), in chunks."""
    fn = jax.jit(models.decode)
    out = []
    for i in range(0, latents.shape[0], chunk):
        z = latents[i:i + chunk]
        pad = chunk - z.shape[0]
        zp = np.pad(z, ((0, pad), (0, 0), (0, 0))) if pad else z
        out.append(np.asarray(fn(models.decoder_params, zp, jax.random.fold_in(key, i)))[: z.shape[0]])
    return np.concatenate(out)


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between blocks (main thread only)."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag["signal"] is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["signal"] = signum
        log.warning("received %s: finishing the current block, then checkpointing",
                    signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _setup_file_log(out_dir: str) -> logging.Handler:
    if not distributed.is_main():  # multi-host: process 0 keeps the log
        return logging.NullHandler()
    handler = logging.FileHandler(os.path.join(out_dir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("lvns_jax").addHandler(handler)
    return handler


def resume_config(out_dir: str, overrides: dict | None = None) -> config_lib.Config:
    """The config saved in ``out_dir`` with the allowed ``overrides`` applied."""
    path = os.path.join(out_dir, "config.toml")
    if not os.path.isfile(path):
        raise LvnsError(f"--resume {out_dir}: no config.toml there (not a run directory)")
    cfg = config_lib.load(path)
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE_KEYS and value != getattr(cfg, key):
            raise LvnsError(f"{key}: cannot change on resume (only {', '.join(RESUMABLE_KEYS)})")
    return cfg.replace(**(overrides or {}))


def run(cfg: config_lib.Config, out_dir: str, resume: bool = False, models: Models | None = None,
        stop_after: int | None = None) -> search.SearchState:
    """Run (or resume) a search in ``out_dir`` until ``cfg.generations``; returns the final state.

    ``stop_after``: stop (with a checkpoint, like a signal) once this generation is reached — used
    to test interruption.
    """
    distributed.initialize(cfg)  # multihost = true: jax.distributed.initialize() before any other JAX call
    os.makedirs(out_dir, exist_ok=True)
    file_log = _setup_file_log(out_dir)
    try:
        return _run(cfg, out_dir, resume, models, stop_after)
    finally:
        logging.getLogger("lvns_jax").removeHandler(file_log)
        file_log.close()


def _run(cfg, out_dir, resume, models, stop_after):
    from lvns_jax.models.build import build_models

    if distributed.is_main():
        with open(os.path.join(out_dir, "config.toml"), "w") as f:
            f.write(cfg.to_toml())
    models = models or build_models(cfg)
    ckpts = Checkpoints(os.path.join(out_dir, "checkpoints"), cfg.keep_checkpoints)
    if resume:
        state = ckpts.restore_latest(distributed.place(_template(cfg, models)))  # onto this run's devices
        state = distributed.place(knn_incremental.attach(state))
        log.info("resumed %s at generation %d", out_dir, int(state.generation))
    else:
        if ckpts.steps():
            raise LvnsError(f"{out_dir} already holds checkpoints; use --resume {out_dir} or another --out")
        t0 = time.perf_counter()
        state = search.init(cfg, models=models)
        jax.block_until_ready(state)
        log.info("initial container of %d decoded and embedded in %.1f s", cfg.container_size,
                 time.perf_counter() - t0)

    gen = int(state.generation)
    main = distributed.is_main()  # multi-host: process 0 writes TensorBoard, metrics and audio
    tb = logs.EventLog(os.path.join(out_dir, "tb")) if main else distributed.NullWriter()
    metrics_file = (logs.MetricsFile(os.path.join(out_dir, "metrics.jsonl"), resume_generation=gen if resume else None)
                    if main else distributed.NullWriter())
    tb.text("config", "```\n" + cfg.to_toml() + "\n```", gen)
    if not models.trained:
        untrained = [d for d in models.description if d.startswith(("UNTRAINED", "TOY"))] or list(models.description)
        notice = ("UNTRAINED MODELS: " + "; ".join(untrained) +
                  ". Sounds and novelty scores are not meaningful; see weights/README.md to convert real weights.")
        log.warning(notice)
        tb.text("models", notice, gen)
    audio_key = jax.random.fold_in(jax.random.key(cfg.seed), 0x5EED)

    def host_outputs(state, g):
        audio_now = bool(cfg.audio_every and g % cfg.audio_every == 0)
        save_now = bool(cfg.save_every and g % cfg.save_every == 0)
        sp = distributed.to_host(state.sparseness)  # gathers are collective: every process takes part
        latents = distributed.to_host(state.latents) if audio_now or save_now else None
        embeddings = distributed.to_host(state.embeddings) if save_now else None
        if not main:
            return
        tb.histogram("container/sparseness", sp, g)
        order = np.argsort(-np.where(np.isfinite(sp), sp, -np.inf), kind="stable")
        if audio_now:
            top = latents[order[: cfg.audio_count]]
            clips = decode_audio(models, top, jax.random.fold_in(audio_key, g), cfg.chunk_size)
            for rank, clip in enumerate(clips):
                tb.audio(f"most_novel/{rank}", clip, models.sample_rate, g)
        if save_now:
            lat = latents[order]
            audio = decode_audio(models, lat, jax.random.fold_in(audio_key, g), cfg.chunk_size)
            logs.save_generation(os.path.join(out_dir, "audio", f"gen_{g:04d}"), audio,
                                 models.sample_rate, lat, sp[order], embeddings[order])
        tb.flush()

    if not resume:
        sp = distributed.to_host(state.sparseness)
        record = {"generation": 0, "sparseness_mean": float(np.mean(sp)), "sparseness_min": float(np.min(sp)),
                  "sparseness_median": float(np.median(sp)), "sparseness_max": float(np.max(sp))}
        metrics_file.write(record)
        for k, v in record.items():
            if k != "generation":
                tb.scalar(f"container/{k}", v, 0)
        host_outputs(state, 0)
        ckpts.save(state)

    compiled: dict[int, object] = {}
    bar = None
    if cfg.progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.generations, initial=gen, unit="gen", dynamic_ncols=True)
    last_done = state
    try:
        with _stop_on_signals() as flag:
            while gen < cfg.generations:
                length = next_stop(gen, cfg) - gen
                if length not in compiled:
                    t0 = time.perf_counter()
                    compiled[length] = search.run_block.lower(state, length).compile()
                    compile_s = time.perf_counter() - t0
                    log.info("compiled a block of %d generations in %.1f s", length, compile_s)
                    tb.scalar("perf/compile_seconds", compile_s, gen)
                t0 = time.perf_counter()
                state, block_metrics = compiled[length](state)
                block_metrics = jax.device_get(block_metrics)
                dt = time.perf_counter() - t0
                last_done = state
                gen = int(state.generation)
                rate = cfg.breed_size * length / dt
                for i in range(length):
                    rec = {k: (v[i].item()) for k, v in block_metrics.items()}
                    rec["individuals_per_second"] = rate
                    rec["step_seconds"] = dt / length
                    metrics_file.write(rec)
                    g = rec["generation"]
                    for k, v in rec.items():
                        if k != "generation":
                            tb.scalar(tb_tag(k), v, g)
                host_outputs(state, gen)
                if (cfg.checkpoint_every and gen % cfg.checkpoint_every == 0) or gen >= cfg.generations:
                    ckpts.save(state)
                if bar is not None:
                    bar.update(length)
                    bar.set_postfix(sparseness=f"{rec['sparseness_mean']:.4g}", ind_s=f"{rate:.1f}")
                if flag["signal"] is not None or (stop_after is not None and gen >= stop_after):
                    ckpts.save(state)
                    why = signal.Signals(flag["signal"]).name if flag["signal"] else f"stop_after={stop_after}"
                    raise Interrupted(f"stopped at generation {gen} ({why}); checkpoint written, "
                                      f"continue with: lvns run --resume {out_dir}")
    except Interrupted:
        raise
    except BaseException:
        log.error("run failed at generation %d; writing a checkpoint of the last finished block", gen)
        with contextlib.suppress(Exception):
            ckpts.save(last_done)
        raise
    finally:
        if bar is not None:
            bar.close()
        ckpts.wait()
        ckpts.close()
        metrics_file.close()
        tb.close()
    log.info("done: %d generations in %s (TensorBoard: tensorboard --logdir %s)", gen, out_dir,
             os.path.join(out_dir, "tb"))
    return state
