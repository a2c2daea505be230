"""Stopping a running search from outside: Ctrl-C, ``kill``, a batch scheduler's pre-emption."""

from __future__ import annotations

import os
import signal
import sys

from dfsearch import ray_compat


class StopOnSignal:
    """While a search runs: the first SIGINT (Ctrl-C) or SIGTERM stops it the way Tune stops on
    Ctrl-C (running trials are stopped, Tune's state is saved, ``fit()`` returns), and the driver
    then writes what finished and says how to ``--resume``. A second signal aborts at once (the
    state Tune saved every ``TUNE_GLOBAL_CHECKPOINT_S`` still resumes). Tune's own SIGINT handler
    is turned off so that SIGTERM, which it does not catch, takes the same path
    (``ray_compat.interrupt_tune``). ``received``: the signal's name, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.received = None
        self._env = os.environ.get(ray_compat.TUNE_NO_SIGINT_ENV)
        os.environ[ray_compat.TUNE_NO_SIGINT_ENV] = "1"
        self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        self._old_tune = signal.getsignal(ray_compat.TUNE_STOP_SIGNAL)
        ray_compat.forget_tune_listener()  # an earlier fit() in this process left its own
        return self

    def _handle(self, sig, frame):
        if self.received is not None or not ray_compat.tune_listens():  # again, or before Tune started: abort
            signal.signal(sig, self._old[sig])
            os.kill(os.getpid(), sig)
            return
        self.received = signal.Signals(sig).name
        print(f"\ndfsearch: {self.received}: stopping the running trials and saving the search state "
              f"(again to abort at once)", file=sys.stderr, flush=True)
        ray_compat.interrupt_tune()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.signal(ray_compat.TUNE_STOP_SIGNAL, self._old_tune)
        if self._env is None:
            os.environ.pop(ray_compat.TUNE_NO_SIGINT_ENV, None)
        else:
            os.environ[ray_compat.TUNE_NO_SIGINT_ENV] = self._env
        return False

    def exit_status(self) -> int | None:
        """128 + the signal's number, as a shell reports a command a signal ended; None if none came."""
        return 128 + signal.Signals[self.received].value if self.received else None
