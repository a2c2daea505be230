"""Every use of Ray that goes past its public API, in one place, with the Ray versions it was
verified on (``VERIFIED_RAY``). ``tests/test_ray_compat.py`` checks each assumption against the
installed Ray and fails loudly when an upgrade changes one.

1. ``SPEED_ENV``: Ray Train V2's internal ``RAY_TRAIN_*`` settings that cut a Train run's fixed
   cost (health-check interval, preemption watcher, metrics, print patching; BENCHMARKS.md).
2. ``trainer_class()``: a ``TorchTrainer`` without Train's ``PlacementGroupCleanerCallback``
   (``TorchTrainer._create_default_callbacks`` is private; there is no public switch).
3. ``interrupt_tune()`` / ``tune_listens()``: Tune stops a running experiment gracefully (stops
   the trials, saves its state, ``fit()`` returns) on SIGUSR1 once its own SIGINT handler is turned
   off with ``TUNE_DISABLE_SIGINT_HANDLER``; no public call does that from another thread or a
   signal handler.
4. ``worker_lost(error)`` / ``startup_waiting(error)``: whether a failed Train run lost a worker
   process or its node (Ray Train's own ``WorkerHealthCheck*Error`` wrappers, private) rather than
   a rank raising an exception of the trial's own; whether it only could not start its worker
   group in time (``WorkerGroupStartupTimeoutError``, private).
"""

from __future__ import annotations

import os
import signal
import sys

VERIFIED_RAY = (">=2.60", "<2.61")  # the range every assumption below was checked on

SPEED_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a report waits up to one interval (2 s default)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print() reaches the driver twice
}

TUNE_STOP_SIGNAL = signal.SIGUSR1
TUNE_NO_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


def ray_is_verified(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Ray) is inside ``VERIFIED_RAY``."""
    from packaging.specifiers import SpecifierSet

    if version is None:
        import ray

        version = ray.__version__
    return version in SpecifierSet(",".join(VERIFIED_RAY))


def warn_if_unverified() -> None:
    if not ray_is_verified():
        import ray

        print(f"dfsearch: Ray {ray.__version__} is outside the versions dfsearch was verified on "
              f"({','.join(VERIFIED_RAY)}); run tests/test_ray_compat.py", file=sys.stderr)


def trainer_class():
    """``TorchTrainer`` without Ray Train's detached ``PlacementGroupCleaner``.

    That cleaner asks the dashboard's State API whether the controller is alive. Without a
    dashboard it never works (the leak behind the search hang, ray-project/ray#54305, #58515);
    with one, under load, a lookup that comes back empty reads as "dead" and it removes the
    placement group of a LIVE run ("A worker health check failed ... placement group was
    removed"). It also costs one process per run. A search frees placement groups itself
    (``dfsearch.search.callbacks.FreePlacementGroups``); a plain ``dfsearch train`` owns its
    controller, so Ray frees the group when the run or the job ends."""
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return Trainer


def tune_listens() -> bool:
    """Whether a running ``Tuner.fit()`` has its stop handler installed (it has from the start of
    the experiment loop until it returns; before, a stop request has nobody to hear it)."""
    return signal.getsignal(TUNE_STOP_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def forget_tune_listener() -> None:
    """Tune leaves its stop handler installed after ``fit()`` returns: reset it before a new
    ``fit()``, so that ``tune_listens`` means "this fit listens"."""
    signal.signal(TUNE_STOP_SIGNAL, signal.SIG_DFL)


def interrupt_tune() -> None:
    """Ask the running ``Tuner.fit()`` in this process to stop as on Ctrl-C: running trials are
    stopped, the experiment state is saved, ``fit()`` returns its results so far."""
    os.kill(os.getpid(), TUNE_STOP_SIGNAL)


def worker_lost(error: BaseException | None) -> bool:
    """Whether a failed Ray Train run (``fit()``'s error) failed because a worker process or its
    node went away (``kill -9``, OOM killer, a reclaimed spot node), not because the trial's own
    code raised. Such a trial did nothing wrong and can resume from its latest checkpoint.

    A ``WorkerGroupError`` maps each failed rank to its exception, as Train's controller polled
    them before it shut the group down: the trial's own exceptions come unwrapped (Train strips its
    ``UserExceptionWithTraceback``); a dead or unreachable worker as ``WorkerHealthCheckFailedError``
    (wrapping ``RayActorError``) or ``...TimeoutError``. One dead rank is enough: the surviving ranks
    then fail in a collective ("Connection closed by peer"), collateral damage that Train reports as
    their own exceptions (Ray's ``DefaultFailurePolicy`` reasons the same way about preemption);
    a survivor's collateral error polled before the dead rank's health check failed counts too
    (``peer_gone``). A run that dies with its controller (its node gone) raises ``RayActorError``."""
    from ray.exceptions import NodeDiedError, RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError
    from ray.train.v2.api.exceptions import ControllerError, PreemptionError, WorkerGroupError

    if isinstance(error, (PreemptionError, RayActorError, NodeDiedError)):
        return True
    if isinstance(error, ControllerError):
        return isinstance(error.controller_failure, (RayActorError, NodeDiedError))
    if isinstance(error, WorkerGroupError):
        return any(isinstance(f, (WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError)) or peer_gone(f)
                   for f in error.worker_failures.values())
    return False


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")  # gloo's words


def peer_gone(e: BaseException) -> bool:
    """A rank's collective (gloo) failed because another rank's process went away."""
    return any(w in str(e) for w in PEER_GONE)


def startup_waiting(error: BaseException | None) -> bool:
    """Whether a Train run failed only because its worker group could not start in time (the
    cluster has no room for it now: a node lost, or the autoscaler still starting one)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    return isinstance(error, ControllerError) and isinstance(error.controller_failure, WorkerGroupStartupTimeoutError)
