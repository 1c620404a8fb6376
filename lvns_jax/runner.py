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
import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from lvns_jax import config as config_lib
from lvns_jax import signals
from lvns_jax import distributed, logs, search, storage
from lvns_jax.checkpoint import Checkpoints, saved_config, step_dirs
from lvns_jax.errors import LvnsError
from lvns_jax.models import Models

log = logging.getLogger("lvns_jax")

#: keys that may change when resuming (everything else must match the checkpointed run)
RESUMABLE_KEYS = ("report", "generations", "scan_length", "checkpoint_every", "keep_checkpoints", "save_every",
                  "audio_every", "audio_count", "progress", "chunk_size", "knn_chunk", "knn", "knn_width", "devices",
                  "multihost")


class Interrupted(LvnsError):
    """The run was stopped by a signal after writing a checkpoint."""


def _interruptible(fn):
    """``fn()`` in a worker thread while the main thread waits: Python runs signal handlers only in the
    main thread, between bytecodes, so a compiled block would otherwise hold a SIGTERM/Ctrl-C back for
    its whole length. The handler sets the flag that the block's in-scan stop check reads."""
    box: dict = {}

    def work():
        try:
            box["out"] = fn()
        except BaseException as e:  # re-raised in the main thread
            box["err"] = e

    worker = threading.Thread(target=work, name="lvns-block", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
    if "err" in box:
        raise box["err"]
    return box["out"]


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
    if metric.startswith("archive_"):
        return f"archive/{metric[len('archive_'):]}"
    if metric.startswith("gradient_"):
        return f"gradient/{metric[len('gradient_'):]}"
    return f"search/{metric}"


class _StartupStop(signals.Stop):
    """Raised by the signal handler while no search state exists yet (nothing to finish or save)."""


_ACTIVE_FLAG: dict | None = None  # the flag of the innermost active _stop_on_signals()


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between blocks (main thread only).

    ``flag["signal"]`` is the signal number once one arrived (readable from a callback). While
    ``flag["startup"]`` is true (no search state exists yet: model building, initial evaluation) a
    signal raises :class:`_StartupStop` at once instead. Re-entrant: a nested call yields the flag
    already installed, so :func:`run` installs the handler before any start-up work.
    """
    global _ACTIVE_FLAG
    if _ACTIVE_FLAG is not None:
        yield _ACTIVE_FLAG
        return
    flag = {"signal": None, "startup": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        again = signals.take_redelivered(signum)  # our re-send of a signal whose exception Python dropped
        if flag["signal"] is not None and not again:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["signal"] = signum
        if flag["startup"]:
            if signals.held_during_import(signum, frame):  # not inside an import (a lazy one in model building)
                return
            raise _StartupStop(signum)
        if not again:
            log.warning("received %s: finishing the current generation, then checkpointing",
                        signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _ACTIVE_FLAG = flag
    try:
        with signals.redeliver_lost():
            yield flag
    finally:
        _ACTIVE_FLAG = None
        for s, h in old.items():
            signal.signal(s, h)


class _LogFile(logging.FileHandler):
    """``run.log``, appended to; for a gs:// run directory a local copy (with the remote log of the run
    being resumed first) uploaded whole after every record (a run logs a few lines per block)."""

    def __init__(self, path: str):
        self._staged = storage.Staged(path, fetch=True)
        super().__init__(self._staged.local)

    def flush(self) -> None:
        super().flush()
        if self._staged.remote and self.stream is not None:
            self._staged.sync()

    def close(self) -> None:
        super().close()
        self._staged.close()


def _setup_file_log(out_dir: str) -> logging.Handler:
    if not distributed.is_main():  # multi-host: process 0 keeps the log
        return logging.NullHandler()
    handler = _LogFile(os.path.join(out_dir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("lvns_jax").addHandler(handler)
    return handler


def _as_dict(cfg: config_lib.Config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # the JSON form a checkpoint stores


def _refuse_changes(old: dict, new: dict, where: str) -> None:
    """One-line :class:`LvnsError` naming the non-resumable keys whose values differ between ``old``
    and ``new`` (config dicts; a key missing on one side counts as its default)."""
    default = _as_dict(config_lib.Config())
    changed = [k for k in default if k not in RESUMABLE_KEYS and old.get(k, default[k]) != new.get(k, default[k])]
    if changed:
        detail = ", ".join(f"{k} {old.get(k, default[k])!r} -> {new.get(k, default[k])!r}" for k in changed)
        raise LvnsError(f"{', '.join(changed)}: cannot change on resume ({where}: {detail}); only "
                        f"{', '.join(RESUMABLE_KEYS)} may change")


def _saved_config(out_dir: str) -> config_lib.Config:
    path = os.path.join(out_dir, "config.toml")
    if not storage.isfile(path):
        raise LvnsError(f"--resume {out_dir}: no config.toml there (not a run directory, or stopped before "
                        f"it was written: start it with lvns run --out {out_dir})")
    if not storage.is_remote(path):
        return config_lib.load(path)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # gs://: config.load reads a local copy
        local = os.path.join(tmp, "config.toml")
        storage.download(path, local)
        return config_lib.load(local)


def _check_resume(cfg: config_lib.Config, out_dir: str) -> None:
    """Refuse (writing nothing) a resume whose config differs from the run's config.toml or from its
    newest checkpoint in a key that is not in :data:`RESUMABLE_KEYS`."""
    saved = _as_dict(_saved_config(out_dir))
    ckpt = saved_config(os.path.join(out_dir, "checkpoints"))
    if ckpt is not None:
        step, values = ckpt
        _refuse_changes(values, saved, f"{os.path.join(out_dir, 'config.toml')} was edited since checkpoint {step}")
        _refuse_changes(values, _as_dict(cfg), f"the configuration given differs from checkpoint {step}")
    _refuse_changes(saved, _as_dict(cfg), f"the configuration given differs from {os.path.join(out_dir, 'config.toml')}")


def _check_new_run(cfg: config_lib.Config, out_dir: str) -> None:
    """Refuse (writing nothing) to start a new run in a directory that already holds one (a checkpoint;
    a start-up that never reached one left nothing to keep), or from a dataset that cannot be used."""
    if not storage.is_remote(out_dir) and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LvnsError(f"--out {out_dir}: exists and is not a directory")
    steps = step_dirs(os.path.join(out_dir, "checkpoints"))
    if steps:
        raise LvnsError(f"{out_dir} already holds a run (checkpoints of generations {', '.join(map(str, steps))}); "
                        f"continue it with lvns run --resume {out_dir}, or choose another --out")
    if cfg.init == "dataset":  # read (and checked: shape, NaN/inf) before anything is written
        from lvns_jax.container import open_latent_file

        open_latent_file(cfg.dataset_path)


def resume_config(out_dir: str, overrides: dict | None = None) -> config_lib.Config:
    """The config saved in ``out_dir`` with the allowed ``overrides`` applied.

    Refused, in one line naming the keys: a config.toml edited since the newest checkpoint, or
    overrides, that change a key not in :data:`RESUMABLE_KEYS`.
    """
    cfg = _saved_config(out_dir)
    ckpt = saved_config(os.path.join(out_dir, "checkpoints"))
    if ckpt is not None:
        _refuse_changes(ckpt[1], _as_dict(cfg),
                        f"{os.path.join(out_dir, 'config.toml')} was edited since checkpoint {ckpt[0]}")
    overrides = overrides or {}
    _refuse_changes(_as_dict(cfg), {**_as_dict(cfg), **json.loads(json.dumps(overrides))}, "the command changes them")
    return cfg.replace(**overrides)


def run(cfg: config_lib.Config, out_dir: str, resume: bool = False, models: Models | None = None,
        stop_after: int | None = None) -> search.SearchState:
    """Run (or resume) a search in ``out_dir`` until ``cfg.generations``; returns the final state.

    Nothing is written before the checks pass: a new run refuses a directory that already holds
    one, a resume refuses a changed non-resumable key (:data:`RESUMABLE_KEYS`). SIGINT/SIGTERM
    are handled from the start: during start-up (no state yet) the run stops at once with
    :class:`Interrupted` and the directory stays resumable (or, before config.toml, startable).

    ``stop_after``: stop (with a checkpoint, like a signal) once this generation is reached — used
    to test interruption.
    """
    with _stop_on_signals() as flag:  # before any start-up work (models, initial evaluation, compile)
        flag["startup"] = True
        try:
            distributed.initialize(cfg)  # multihost = true: jax.distributed.initialize() before any other JAX call
            if resume:
                _check_resume(cfg, out_dir)
            else:
                _check_new_run(cfg, out_dir)
            if jax.process_count() > 1:  # every process checked before any writes
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("lvns_jax: run directory checked")
            storage.makedirs(out_dir)  # gs://: checks the bucket (object stores have no directories)
            logger = logging.getLogger("lvns_jax")
            old_level = logger.level
            if logger.getEffectiveLevel() > logging.INFO:  # info lines (compile times, done) reach run.log
                logger.setLevel(logging.INFO)
            file_log = _setup_file_log(out_dir)
            try:
                return _run(cfg, out_dir, resume, models, stop_after)
            except BaseException as e:  # the one line the CLI prints, into run.log too (not twice on the console)
                if not isinstance(e, _StartupStop):
                    file_log.handle(logging.makeLogRecord({
                        "name": "lvns_jax", "levelno": logging.ERROR, "levelname": "ERROR",
                        "msg": "%s", "args": (str(e) if isinstance(e, LvnsError) else f"{type(e).__name__}: {e}",)}))
                raise
            finally:
                logger.removeHandler(file_log)
                file_log.close()
                logger.setLevel(old_level)
        except _StartupStop as e:
            name = signal.Signals(e.signum).name
            if resume:
                msg = f"stopped during start-up ({name}); the run is as it was: lvns run --resume {out_dir}"
            elif storage.isfile(os.path.join(out_dir, "config.toml")):
                msg = (f"stopped during start-up ({name}), before the first checkpoint; "
                       f"lvns run --resume {out_dir} starts it from generation 0")
            else:
                msg = f"stopped during start-up ({name}); nothing to resume yet"
            stop = Interrupted(msg)
            stop.during_startup = True  # JAX may have been stopped mid-trace: the CLI exits without teardown
            raise stop from None
        finally:
            flag["startup"] = False


def _startup_done() -> None:
    """End of start-up (a state exists). A signal whose exception was swallowed on the way (raised
    inside a gc callback or a finaliser, which Python ignores) still stops the start-up here."""
    if _ACTIVE_FLAG is not None:
        if _ACTIVE_FLAG["startup"] and _ACTIVE_FLAG["signal"] is not None:
            raise _StartupStop(_ACTIVE_FLAG["signal"])
        _ACTIVE_FLAG["startup"] = False


def _write_config(out_dir: str, cfg: config_lib.Config) -> None:
    """config.toml, replaced atomically (a stop while writing leaves the old file or the new one)."""
    path = os.path.join(out_dir, "config.toml")
    if storage.is_remote(path):  # an object upload is atomic by itself
        with storage.open(path, "w") as f:
            f.write(cfg.to_toml())
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(cfg.to_toml())
        os.replace(tmp, path)
    except OSError as e:
        raise LvnsError(f"cannot write {path}: {e.strerror or e}") from e


def _run(cfg, out_dir, resume, models, stop_after):
    from lvns_jax.assemble import assemble

    eng = assemble(cfg, models)  # the plug-ins and models this config names (checks them all)
    models = eng.models
    if distributed.is_main():  # written once the models are built: a run that has a config.toml can resume
        _write_config(out_dir, cfg)
    ckpts = Checkpoints(os.path.join(out_dir, "checkpoints"), cfg.keep_checkpoints, _as_dict(cfg))
    if resume and not ckpts.steps():
        log.info("%s has no checkpoint yet (stopped during start-up?): starting it from generation 0 with its "
                 "saved config.toml", out_dir)
        resume = False
    if resume:
        state = eng.attach(ckpts.restore_latest(eng.template()))  # onto this run's devices
        log.info("resumed %s at generation %d", out_dir, int(state.generation))
    else:
        t0 = time.perf_counter()
        state = eng.init()
        jax.block_until_ready(state)
        log.info("initial container of %d decoded and embedded in %.1f s", cfg.container_size,
                 time.perf_counter() - t0)

    _startup_done()  # a state exists: from now on a signal stops after the block in flight, with a checkpoint
    gen = int(state.generation)
    main = distributed.is_main()  # multi-host: process 0 writes TensorBoard, metrics and audio
    tb = logs.EventLog(os.path.join(out_dir, "tb")) if main else distributed.NullWriter()
    metrics_file = (logs.MetricsFile(os.path.join(out_dir, "metrics.jsonl"), resume_generation=gen if resume else -1)
                    if main else distributed.NullWriter())
    tb.text("config", "```\n" + cfg.to_toml() + "\n```", gen)
    if not models.trained:
        untrained = [d for d in models.description if d.startswith(("UNTRAINED", "TOY"))] or list(models.description)
        notice = ("UNTRAINED MODELS: " + "; ".join(untrained) +
                  ". Sounds and novelty scores are not meaningful; see weights/README.md to convert real weights.")
        log.warning(notice)
        tb.text("models", notice, gen)
    def host_outputs(state, g):
        audio_now = bool(cfg.audio_every and g % cfg.audio_every == 0)
        save_now = bool(cfg.save_every and (g % cfg.save_every == 0 or g >= cfg.generations))  # and the last one
        sp = distributed.to_host(state.sparseness)  # gathers are collective: every process takes part
        latents = distributed.to_host(state.latents) if audio_now or save_now else None
        born = distributed.to_host(state.born) if audio_now or save_now else None
        slot = distributed.to_host(state.slot) if audio_now or save_now else None
        embeddings = distributed.to_host(state.embeddings) if save_now else None
        if not main:
            return
        tb.histogram("container/sparseness", sp, g)
        order = np.argsort(-np.where(np.isfinite(sp), sp, -np.inf), kind="stable")
        if audio_now:
            top = order[: cfg.audio_count]  # the very sounds that were embedded (identity noise keys)
            clips = np.asarray(eng.decode_members(state.id_key, latents[top], born[top], slot[top]))
            for rank, clip in enumerate(clips):
                tb.audio(f"most_novel/{rank}", clip, models.sample_rate, g)
        if save_now:
            lat = latents[order]
            audio = np.asarray(eng.decode_members(state.id_key, lat, born[order], slot[order]))
            logs.save_generation(os.path.join(out_dir, "audio", f"gen_{g:04d}"), audio,
                                 models.sample_rate, lat, sp[order], embeddings[order], born=born[order])
        tb.flush()
        metrics_file.flush()  # gs://: uploaded before the block's checkpoint

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
            # checked before every generation inside the compiled block, so a stop takes effect within one
            # generation (one process only: all processes of a multi-host run must agree on the block)
            stop_check = (lambda: flag["signal"] is not None) if jax.process_count() == 1 else None
            while gen < cfg.generations:
                if flag["signal"] is not None or (stop_after is not None and gen >= stop_after):
                    ckpts.save(state)  # (a run whose last block finished is done, not stopped)
                    why = signal.Signals(flag["signal"]).name if flag["signal"] else f"stop_after={stop_after}"
                    raise Interrupted(f"stopped at generation {gen} ({why}); checkpoint written, "
                                      f"continue with: lvns run --resume {out_dir}")
                length = next_stop(gen, cfg) - gen
                if length not in compiled:
                    t0 = time.perf_counter()
                    compiled[length] = search.run_block.lower(eng, state, length, stop_check).compile()
                    compile_s = time.perf_counter() - t0
                    log.info("compiled a block of %d generations in %.1f s", length, compile_s)
                    tb.scalar("perf/compile_seconds", compile_s, gen)
                t0 = time.perf_counter()
                state, block_metrics = _interruptible(lambda: jax.device_get(compiled[length](eng, state)))
                dt = time.perf_counter() - t0
                last_done = state
                done = int(state.generation) - gen  # < length when a stop request skipped the rest
                gen = int(state.generation)
                rate = cfg.breed_size * max(done, 1) / dt
                for i in range(done):
                    rec = {k: (v[i].item()) for k, v in block_metrics.items()}
                    rec["individuals_per_second"] = rate
                    rec["step_seconds"] = dt / max(done, 1)
                    metrics_file.write(rec)
                    g = rec["generation"]
                    for k, v in rec.items():
                        if k != "generation":
                            tb.scalar(tb_tag(k), v, g)
                host_outputs(state, gen)
                if (cfg.checkpoint_every and gen % cfg.checkpoint_every == 0) or gen >= cfg.generations:
                    ckpts.save(state)
                if bar is not None:
                    bar.update(done)
                    bar.set_postfix(sparseness=f"{rec['sparseness_mean']:.4g}", ind_s=f"{rate:.1f}")
    except Interrupted:
        raise
    except KeyboardInterrupt:  # a second signal: stop now, keep the last finished block
        with contextlib.suppress(Exception):
            ckpts.save(last_done)
        raise Interrupted(f"stopped at once at generation {gen} (second signal); last checkpoint: generation "
                          f"{max(ckpts.steps(), default=0)}, continue with: lvns run --resume {out_dir}") from None
    except BaseException as e:
        if not isinstance(e, LvnsError):  # an LvnsError is its own one-line message
            log.error("run failed at generation %d; writing a checkpoint of the last finished block", gen)
        with contextlib.suppress(Exception):
            ckpts.save(last_done)
        with contextlib.suppress(Exception):
            ckpts.wait()
        raise
    finally:
        if bar is not None:
            bar.close()
        ckpts.wait()
        ckpts.close()
        metrics_file.close()
        tb.close()
    if cfg.report and distributed.is_main() and "://" not in out_dir:  # lvns report: RUN_DIR/report.html
        try:
            from lvns_jax import report as report_lib

            log.info("report: %s", report_lib.write_report(out_dir)[0])
        except Exception as e:  # a report problem never fails a finished run
            log.warning("no report.html (%s: %s); retry with: lvns report %s", type(e).__name__, e, out_dir)
    log.info("done: %d generations in %s (TensorBoard: tensorboard --logdir %s)", gen, out_dir,
             os.path.join(out_dir, "tb"))
    return state
