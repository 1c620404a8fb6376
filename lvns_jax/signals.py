"""Signal handlers that raise, without losing the signal.

A Python signal handler runs in the main thread between two bytecodes, wherever that is: also
inside a gc callback (JAX installs one), a weakref callback or a ``__del__``, where an exception
is "ignored" (printed as a traceback, then dropped). While :func:`redeliver_lost` is active, a
:class:`Stop` dropped that way is not printed; its signal is sent again a moment later, until the
handler's exception lands in ordinary code.

A handler that interrupts an import (a module's top level, or a C extension's initialisation that
calls back into Python: numpy's core, jaxlib) does not raise there: an exception at that point can
leave a half-initialised extension behind, and the interpreter then crashes (seen: SIGSEGV and
SIGABRT when a SIGTERM landed inside ``import jax``). :func:`inside_import` tells the handler so,
and :func:`defer` sends the signal again a moment later, until the import is over.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading


class Stop(BaseException):
    """Raised by a signal handler to stop at once (not an :class:`Exception`: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_state = {"depth": 0, "redelivered": set()}


def take_redelivered(signum: int) -> bool:
    """True (once) when this delivery of ``signum`` is our own re-send of a dropped one."""
    if signum in _state["redelivered"]:
        _state["redelivered"].discard(signum)
        return True
    return False


def _resend(signum: int) -> None:
    if _state["depth"] > 0:  # still handled by us (not restored to the default, which would kill)
        os.kill(os.getpid(), signum)
    else:
        _state["redelivered"].discard(signum)


def inside_import(frame) -> bool:
    """True when ``frame`` (a signal handler's) runs inside an import: importlib's frames are on the stack."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib."):
            return True
        frame = frame.f_back
    return False


def held_during_import(signum: int, frame) -> bool:
    """For a handler about to raise: if ``frame`` is inside an import, send ``signum`` again later
    (:func:`defer`) and return True (the handler returns instead of raising)."""
    if inside_import(frame):
        defer(signum)
        return True
    return False


def defer(signum: int, delay: float = 0.02) -> None:
    """Send ``signum`` again in ``delay`` seconds (while :func:`redeliver_lost` is active): for a handler
    that must not raise where the signal landed. The re-sent delivery reads as ``take_redelivered``."""
    _state["redelivered"].add(signum)
    timer = threading.Timer(delay, _resend, (signum,))
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def redeliver_lost():
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, Stop):
            defer(exc.signum)
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        sys.unraisablehook = previous
