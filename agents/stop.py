"""The clean stop: the training loop's stop signals, caught from the process's start.

``worldrl train`` catches SIGTERM before anything heavy is imported (:func:`catch_early`), so
that a stop sent while the run starts up (imports, envs, model, replay: seconds to minutes) ends
like one sent later: the loop takes one batch, checkpoints and exits 0, instead of the process
dying on the signal's default action. Light on purpose: no torch here.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Catches the stop signals; the training loop polls :attr:`signal` (the first one's name),
    finishes the update in flight, checkpoints and returns. After the first signal a second
    Ctrl-C interrupts at once (the previous SIGINT handler); SIGTERM and the warning signal keep
    asking for the clean stop (SLURM sends SIGTERM after its warning signal)."""

    def __init__(self, names: list[str], early: bool = False):
        self.names = names
        self.signal: str | None = None
        self.early = early  # caught before the loop: a second signal then ends the process
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Catch ``names``; the training loop's call also takes back a handler some library
        may have set during start-up (the first saved handler is what ``restore`` puts back).
        After a stop signal, Ctrl-C is left to interrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread; the caller owns signals
        for name in self.names:
            sig = signal.Signals[name]
            if sig == signal.SIGINT and self.signal is not None:
                continue
            if signal.getsignal(sig) is not self._handle:
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def start_loop(self) -> None:
        """The loop has begun: from now on a second signal is the same clean stop."""
        self.early = False
        self.install()

    def _handle(self, signum, frame) -> None:
        if self.early and self.signal is not None:  # asked twice during start-up (a hang?):
            self.restore()  # the signal's own action, as if never caught
            signal.raise_signal(signum)
            return
        self.signal = self.signal or signal.Signals(signum).name
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


_early: StopRequest | None = None


def catch_early(names: tuple[str, ...] = ("SIGTERM",)) -> None:
    """Catch ``names`` from now on; the next :func:`stop_request` takes over what arrived. A
    second one before the loop begins ends the process (a start-up that hangs can still be
    stopped). Ctrl-C (SIGINT) is left alone: during start-up it interrupts at once."""
    global _early
    _early = StopRequest(list(names), early=True)
    _early.install()


def stop_request(names: list[str]) -> StopRequest:
    """A :class:`StopRequest` for ``names``: the early one (with any signal it caught) when
    :func:`catch_early` ran, else a new one; the loop's ``install()`` adds the other names."""
    global _early
    if _early is None:
        return StopRequest(names)
    req, _early = _early, None
    req.names = list(dict.fromkeys([*req.names, *names]))
    return req
