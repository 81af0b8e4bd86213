"""freeze.unwinding_signals: the first TERM/HUP/INT unwinds; a second one, arriving while the
finally blocks of the first run, must not raise again (it printed a generator's traceback
and replaced the first signal's exit status)."""

from __future__ import annotations

import os
import signal

import pytest

from kiwi import freeze


def test_only_the_first_signal_raises():
    ran_cleanup = []
    with pytest.raises(freeze.Interrupted) as caught:
        with freeze.unwinding_signals():
            try:
                os.kill(os.getpid(), signal.SIGHUP)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # during the unwinding: ignored
                ran_cleanup.append(True)
    assert ran_cleanup == [True]
    assert "SIGHUP" in caught.value.message
    assert caught.value.exit_code == 128 + signal.SIGHUP


def test_a_generator_closed_while_unwinding_is_not_interrupted_again():
    closed = []

    def runs():
        try:
            yield 1
            yield 2
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the second signal lands in its finally
            closed.append(True)

    with pytest.raises(freeze.Interrupted):
        with freeze.unwinding_signals():
            for _ in runs():
                os.kill(os.getpid(), signal.SIGINT)
    assert closed == [True]


def test_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with freeze.unwinding_signals():
        pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_lost_in_a_finalizer_leaves_no_traceback_and_the_next_one_raises(capsys):
    """A signal that lands in a generator's finally while the collector closes it cannot be
    raised there: no "Exception ignored" traceback, and the next signal still unwinds."""

    def runs():
        try:
            yield 1
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(freeze.Interrupted) as caught:
        with freeze.unwinding_signals():
            it = runs()
            next(it)
            del it  # closed here: the Interrupted in its finally is unraisable
            os.kill(os.getpid(), signal.SIGHUP)
    assert "SIGHUP" in caught.value.message
    assert "Traceback" not in capsys.readouterr().err
