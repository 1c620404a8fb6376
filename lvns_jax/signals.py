"""Signal handlers that raise, without losing the signal.

A Python signal handler runs in the main thread between two bytecodes, wherever that is: also
inside a gc callback (JAX installs one), a weakref callback or a ``__del__``, where an exception
is "ignored" (printed as a traceback, then dropped). While :func:`redeliver_lost` is active, a
:class:`Stop` dropped that way is not printed; its signal is sent again a moment later, until the
handler's exception lands in ordinary code.
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


@contextlib.contextmanager
def redeliver_lost():
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, Stop):
            _state["redelivered"].add(exc.signum)
            timer = threading.Timer(0.02, _resend, (exc.signum,))
            timer.daemon = True
            timer.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        sys.unraisablehook = previous
