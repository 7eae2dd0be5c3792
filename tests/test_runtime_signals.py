"""`runtime.stop_signals`: SIGTERM and Ctrl-C become `Interrupted`, or a deferred stop."""

from __future__ import annotations

import os
import signal

import pytest

from medfoundry.errors import Interrupted
from medfoundry.runtime import active_stop_signals, stop_signals


def test_a_signal_outside_a_loop_raises_interrupted_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info, stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert active_stop_signals() is None


def test_the_first_signal_defers_to_the_loop_and_the_second_stops_at_once():
    asked: list[int] = []
    # a suite run as a background job inherits SIGINT as ignored, which stop_signals keeps
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop_signals() as guard, guard.defer_to(asked.append):
            os.kill(os.getpid(), signal.SIGINT)
            assert asked == [signal.SIGINT] and guard.received == signal.SIGINT
            with pytest.raises(Interrupted) as info:
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert info.value.exit_code == 130


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # nothing happens
    finally:
        signal.signal(signal.SIGINT, previous)
