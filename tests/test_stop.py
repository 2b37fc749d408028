"""agents/stop.py: the stop signals' handlers, in this process (signals raised at ourselves)."""

import signal

import pytest

from agents.stop import StopRequest


@pytest.fixture(autouse=True)
def _keep_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_an_early_stop_carries_into_the_loop_and_leaves_ctrl_c_alone():
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest(["SIGTERM"], early=True)
    stop.install()
    signal.raise_signal(signal.SIGTERM)
    assert stop.signal == "SIGTERM"
    stop.names = ["SIGTERM", "SIGINT"]
    stop.start_loop()
    assert signal.getsignal(signal.SIGINT) is before  # asked to stop already: Ctrl-C interrupts
    signal.raise_signal(signal.SIGTERM)  # in the loop a second SIGTERM is the same clean stop
    assert stop.signal == "SIGTERM"
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_loop_takes_back_a_handler_a_library_set_and_restore_puts_back_the_first():
    first = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest(["SIGUSR1"], early=True)
    stop.install()
    caught = []
    signal.signal(signal.SIGUSR1, lambda *a: caught.append(a))  # a library, during start-up
    stop.start_loop()
    signal.raise_signal(signal.SIGUSR1)
    assert stop.signal == "SIGUSR1" and not caught
    stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is first


def test_a_second_signal_during_start_up_takes_the_signals_own_action():
    stop = StopRequest(["SIGUSR1"], early=True)
    stop.install()
    signal.raise_signal(signal.SIGUSR1)
    assert stop.signal == "SIGUSR1"
    caught = []
    stop._previous[signal.SIGUSR1] = lambda *a: caught.append(a)  # stands in for SIG_DFL
    signal.raise_signal(signal.SIGUSR1)
    assert caught and signal.getsignal(signal.SIGUSR1) is not stop._handle
