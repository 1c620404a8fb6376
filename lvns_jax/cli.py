"""The ``lvns`` console script: ``lvns run``, ``lvns convert``, ...

User errors (:class:`lvns_jax.errors.LvnsError`) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from lvns_jax import signals
from lvns_jax.errors import LvnsError


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.model == "vggish":
        from lvns_jax.models.vggish.convert import convert

        meta = convert(args.source, args.out, pca=args.pca)
    elif args.model == "panns":
        if args.pca:
            raise LvnsError("--pca only applies to `lvns convert vggish`")
        from lvns_jax.models.panns.convert import convert

        meta = convert(args.source, args.out)
    else:
        if args.pca:
            raise LvnsError("--pca only applies to `lvns convert vggish`")
        from lvns_jax.models.rave.convert import convert, summary

        meta = convert(args.source, args.out)
        print(summary(meta, args.source))
    print(f"wrote {args.out} ({meta.get('architecture', args.model)})")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from lvns_jax.models.rave.convert import inspect

    text, ok = inspect(args.source)
    print(text)
    return 0 if ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from lvns_jax import bench

    return bench.main(args.rest)


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import os
    import time

    from lvns_jax import config as config_lib
    from lvns_jax import runner

    items = list(args.items)
    path = None
    if items and "=" not in items[0]:
        path = items.pop(0)
    for item in items:
        if "=" not in item:
            raise LvnsError(f"expected key=value after the config file, got {item!r}")
    if args.resume:
        if path:
            raise LvnsError("--resume takes the config saved in the run directory; do not give a config file")
        cfg = runner.resume_config(args.resume, config_lib.parse_overrides(items))
        out = args.resume
    else:
        from lvns_jax.assemble import check

        cfg = check(config_lib.load(path, items))  # plug-in names too, before anything is written
        name = os.path.splitext(os.path.basename(path))[0] if path else "default"
        out = args.out or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _say(f"lvns: run directory {out}")
    if _SIGNALS.get("pending") is not None:  # a signal during the imports whose exception got lost
        raise _Stopped(_SIGNALS["pending"])
    with _console_log(logging.INFO):  # info lines (resumed, compile times, done) on stderr, like run.log
        runner.run(cfg, out, resume=bool(args.resume))  # handles SIGINT/SIGTERM itself while it runs
    _SIGNALS["finished"] = True
    report = os.path.join(out, "report.html")
    listen = f"   listen: {report}" if "://" not in out and os.path.isfile(report) else ""
    print(f"lvns: done. TensorBoard: .venv/bin/tensorboard --logdir {os.path.join(out, 'tb')}{listen}   "
          f"audio: {os.path.join(out, 'audio')}   metrics: {os.path.join(out, 'metrics.jsonl')}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import logging

    from lvns_jax import encode

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    result = encode.encode_folder(args.audio_dir, args.rave, frames=args.frames, offset=args.offset,
                                  seed=args.seed, sample_rate=args.sample_rate, progress=not args.no_progress)
    encode.save_npz(args.out, result)
    print(encode.summary(result, args.out, args.rave))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from lvns_jax import plot

    pca, gens = plot.parse_generations(args.pca_generations)
    labels = args.labels.split(",") if args.labels else None
    out = plot.plot_runs(args.runs, args.out, x=args.x, pca_generations=gens, pca=pca, labels=labels,
                         title=args.title)
    print(f"wrote {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lvns_jax import report

    gens = report.parse_generations(args.generations)
    out, data = report.write_report(args.run_dir, args.out, gens, embed_audio=args.embed_audio,
                                    max_points=args.max_points)
    print(report.summary(out, data))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from lvns_jax import config as config_lib
    from lvns_jax import plan

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    for item in items:
        if "=" not in item:
            raise LvnsError(f"expected key=value after the config file, got {item!r}")
    if args.block < 0:
        raise LvnsError(f"--block: must be >= 0, got {args.block}")
    for topo in filter(None, args.topology.split(",")):  # a missing compiler: one line before any model is built
        if plan.gpu_topology(topo) is not None:
            if not plan.cuda_plugin_available():
                raise plan.PlanError(plan.NO_CUDA)
        elif not plan.libtpu_available():
            raise plan.PlanError(plan.NO_LIBTPU)
    from lvns_jax.assemble import check

    auto = args.chunk_size == "auto"
    if args.chunk_size is not None and not auto:
        if not args.chunk_size.isdigit() or int(args.chunk_size) < 1:
            raise LvnsError(f"--chunk-size: expected auto or a positive integer, got {args.chunk_size!r}")
        items.append(f"chunk_size={int(args.chunk_size)}")
    hbm = plan.parse_bytes(args.hbm_limit) if args.hbm_limit else None
    cfg = check(config_lib.load(path, items))
    if auto:
        results = [plan.plan_auto_chunk(cfg, topo, block=args.block, stop_check=args.stop_check, hbm_bytes=hbm,
                                        margin=args.margin)
                   for topo in args.topology.split(",") if topo]
    else:
        results = [plan.plan(cfg, topo, block=args.block, stop_check=args.stop_check, hbm_bytes=hbm)
                   for topo in args.topology.split(",") if topo]
    for res in results:
        print(plan.table(res))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=2)
        _say(f"lvns plan: wrote {args.json}")
    return 0 if all(r["ok"] for r in results) else 1


@contextlib.contextmanager
def _console_log(level: int):
    """The "lvns_jax" logger on stderr at ``level``, set explicitly: its own handler, not propagated
    (orbax/absl configure the root logger first, which makes ``logging.basicConfig`` a no-op)."""
    import logging

    logger = logging.getLogger("lvns_jax")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False) or os.environ.get("LVNS_DEBUG"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvns", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also: LVNS_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a latent vector novelty search")
    r.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help="a TOML config (or an original LVNS-RAVE .gin), then key=value overrides")
    r.add_argument("--out", default=None, help="run directory (default runs/NAME-TIME)")
    r.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (same as lvns --debug run)")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("convert", help="convert RAVE .ts / torchvggish .pth / PANNs .pth weights to Flax (needs torch)")
    c.add_argument("model", choices=["rave", "vggish", "panns"])
    c.add_argument("source", help="RAVE .ts export, torchvggish state dict (.pth) or PANNs Cnn14 checkpoint "
                                  "(Cnn14_mAP=0.431.pth)")
    c.add_argument("--out", required=True, help="output directory, e.g. weights/vggish")
    c.add_argument("--pca", default=None, help="VGGish PCA parameters: torchvggish .pth, TF vggish_pca_params.npz "
                                               "or a hub state dict (pproc.*), vggish only")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="what a RAVE .ts export is and whether it converts, without converting "
                                       "(needs torch)")
    i.add_argument("source", metavar="MODEL.ts", help="RAVE TorchScript export")
    i.set_defaults(func=_cmd_inspect)

    pl = sub.add_parser("plot", help="plot sparseness vs generation/time and a PCA of the container (needs matplotlib)")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories made by `lvns run`")
    pl.add_argument("--out", required=True, metavar="FIG.png", help="output figure (format from the extension)")
    pl.add_argument("--x", default="generation", choices=["generation", "time", "both"],
                    help="x axis of the sparseness curves: generation, cumulative step time, or both panels")
    pl.add_argument("--pca-generations", default=None, metavar="G1,G2,...",
                    help="saved generations to project with PCA (default: up to 4 saved ones; none: no PCA)")
    pl.add_argument("--labels", default=None, help="comma-separated legend labels, one per run (default: folder names)")
    pl.add_argument("--title", default=None, help="figure title")
    pl.set_defaults(func=_cmd_plot)

    rp = sub.add_parser("report", help="one self-contained HTML page exploring a run: curves, embedding map, "
                                       "neighbours, sounds")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `lvns run`")
    rp.add_argument("--out", default=None, metavar="REPORT.html",
                    help="output page (default RUN_DIR/report.html); audio is referenced relative to it")
    rp.add_argument("--generations", default=None, metavar="G1,G2,...|last",
                    help="saved generations to show, e.g. 0,10,last (default: all saved, at most 12 evenly spaced)")
    rp.add_argument("--embed-audio", action="store_true",
                    help="embed the WAVs as base64 (one portable file, small runs) instead of relative links")
    rp.add_argument("--max-points", type=int, default=2000, metavar="N",
                    help="points drawn per generation; larger containers are subsampled (default 2000)")
    rp.set_defaults(func=_cmd_report)

    b = sub.add_parser("bench", add_help=False,
                       help="time the jitted step per stage (and the original algorithm); `lvns bench -h`")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)

    e = sub.add_parser("encode", help="encode a folder of audio with a RAVE .ts into latents for init=dataset "
                                      "(needs torch)")
    e.add_argument("audio_dir", help="folder of .wav/.flac/.ogg files (searched recursively)")
    e.add_argument("--rave", required=True, metavar="MODEL.ts", help="the RAVE TorchScript export that encodes")
    e.add_argument("--out", required=True, help="latents.npz (or .h5 for the original LVNS-RAVE layout)")
    e.add_argument("--frames", type=int, default=0, metavar="T",
                   help="fit every clip to T frames (truncate / zero-pad); default: keep each clip's length")
    e.add_argument("--offset", type=int, default=0, metavar="F", help="drop the first F frames of every clip")
    e.add_argument("--seed", type=int, default=0, help="torch seed (RAVE's encoder samples its posterior)")
    e.add_argument("--sample-rate", type=int, default=None, help="the model's rate, if the export does not say")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_encode)

    pn = sub.add_parser("plan", help="compile one generation ahead of time for a TPU topology or N GPUs on this "
                                     "machine (needs libtpu: pip install -e '.[tpu]'; for GPUs the CUDA plugin, "
                                     "pip install -e '.[cuda]' in a separate venv): per-device memory, flops, warnings")
    pn.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                    help="a TOML config (or an original LVNS-RAVE .gin), then key=value overrides")
    pn.add_argument("--topology", required=True, metavar="NAME[,NAME...]",
                    help="TPU topology, e.g. v5e:2x4 (8 chips), v5e:2x2, v4:2x2x1, or N GPUs of one host: "
                         "h100:1, h100:8, h200:8 (NVIDIA H100 / H200 SXM); comma list for several")
    pn.add_argument("--block", type=int, default=0, metavar="G",
                    help="compile a run_block of G generations (one lax.scan) instead of one step")
    pn.add_argument("--stop-check", action="store_true",
                    help="with --block: include the per-generation host stop check (io_callback) that a "
                         "one-process `lvns run` compiles in")
    pn.add_argument("--chunk-size", default=None, metavar="auto|N",
                    help="decode/embed chunk size: N (like chunk_size=N), or auto: the largest of breed/devices "
                         "halved until the compiled per-device memory fits in --margin of the chip's HBM")
    pn.add_argument("--hbm-limit", default=None, metavar="BYTES",
                    help="per-device memory to plan against instead of the chip's HBM (e.g. 8GiB, 512MiB)")
    pn.add_argument("--margin", type=float, default=0.9,
                    help="--chunk-size auto: fraction of the HBM the compiled program may use (default 0.9)")
    pn.add_argument("--json", default=None, metavar="OUT.json", help="also write the full result as JSON")
    pn.set_defaults(func=_cmd_plan)
    return p


class _Stopped(signals.Stop):
    """SIGINT/SIGTERM outside :func:`lvns_jax.runner.run` (imports, reading the config)."""


_SIGNALS = {"finished": False, "pending": None}


def main(argv: list[str] | None = None) -> int:
    """SIGTERM (and SIGINT) end the CLI with one line instead of a traceback or a silent kill, from the
    start; :func:`lvns_jax.runner.run` installs its own handlers while it runs."""
    import signal
    import threading

    def handler(signum, frame):
        signals.take_redelivered(signum)
        if not _SIGNALS["finished"]:
            _SIGNALS["pending"] = signum
            if signals.held_during_import(signum, frame):  # raising inside `import jax` can crash it
                return
            raise _Stopped(signum)  # if Python drops it (raised inside a gc callback), it is sent again

    _SIGNALS.update(finished=False, pending=None, startup_stop=False)
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with signals.redeliver_lost():
            rc = _main(argv)
        if _SIGNALS.get("startup_stop") and argv is None:  # the `lvns` process itself (not a test calling main)
            # a start-up stopped inside JAX tracing/compiling can crash the interpreter's teardown
            # (segfault in XLA's destructors); everything is written and flushed: leave directly
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        return rc
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    except _Stopped as e:  # the signal landed while the options were read
        words = sys.argv[1:] if argv is None else argv
        return _stopped_during_startup(words[0] if words else None, e.signum)
    if args.command == "bench":  # `lvns bench` has its own options (lvns_jax.bench)
        args.rest = extra + args.rest
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except LvnsError as e:
        if type(e).__name__ == "Interrupted":
            _say(f"lvns: {e}")
            _SIGNALS["startup_stop"] = getattr(e, "during_startup", False)
            return 130
        if _debug(args):
            raise
        _say(f"lvns: error: {e}")
        return 2
    except _Stopped as e:
        return _stopped_during_startup(args.command, e.signum)
    except KeyboardInterrupt:
        _say("lvns: interrupted")
        return 130
    except Exception as e:
        signum = _lost_stop(e)
        if signum is not None:  # code that turned the handler's exception into its own error
            return _stopped_during_startup(args.command, signum)
        if not isinstance(e, (OSError, ValueError)) or _debug(args):
            raise
        _say(f"lvns: error: {type(e).__name__}: {e}")  # e.g. unreadable files: one line
        return 2


def _say(line: str) -> None:
    """One line on stderr in one write: a signal handler runs between two of print()'s writes (text,
    then the newline), and the 'stopped' line would then continue the line before."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _lost_stop(e: BaseException) -> int | None:
    """The signal of a :class:`_Stopped` that some code turned into another error (the handler's
    exception is then the cause or context of the one that reaches :func:`_main`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, signals.Stop):
            return e.signum
        e = e.__cause__ or e.__context__
    return None


def _stopped_during_startup(command: str | None, signum: int) -> int:
    import signal

    name = signal.Signals(signum).name
    _say(f"lvns: stopped during start-up ({name}); nothing to resume yet" if command == "run"
         else f"lvns: stopped ({name})")
    return 130


if __name__ == "__main__":
    sys.exit(main())
