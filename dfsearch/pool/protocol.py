"""The warm-pool protocol: every message between a Tune trial, the broker and a pool, typed, and
the broker's contract in one place.

Who talks to whom::

    Tune trial (search.backends.PoolBackend)     broker (pool.broker.Broker)     pool rank 0 (pool.runner)
      submit(trial_id, TrialRequest)       ->     queue                   ->    take(pool_id) -> Job
      fetch(trial_id) -> [EpochResult ...] <-     inbox[trial]            <-    post(trial_id, EpochResult)
      decide(trial_id, epoch, CONTINUE)    ->     decision[trial]         ->    wait_decision(...) -> Decision
      (search callback) stop(trial_id)     ->     decision = STOP
                                           <-     TrialDone               <-    post(trial_id, TrialDone())
                                           <-     TrialFailed | TrialLost <-    raised(...) / the pool's run ended

Contract of the broker (a Ray actor; every call returns at once or after its timeout):

* trial side: ``submit(trial_id, request)``; ``fetch(trial_id, timeout)`` -> a list of
  ``EpochResult`` / ``TrialDone`` / ``TrialFailed``; ``decide(trial_id, epoch, CONTINUE)`` once Tune
  took an epoch's result; ``stop(trial_id)`` when Tune ended the trial (ASHA, the epoch budget);
* pool side: ``take(pool_id, timeout, generation)`` -> a ``Job``, ``None`` (nothing yet) or
  ``SHUTDOWN`` (the search is over, or ``generation`` is not the pool's current one);
  ``post(trial_id, message, ticket)``; ``wait_decision(trial_id, epoch, timeout, ticket)`` ->
  ``CONTINUE``, ``STOP`` (Tune ended the trial, or no word within the timeout) or ``SHUTDOWN``
  (the search is ending, e.g. interrupted: the trial did not end, ``--resume`` continues it; or
  the ticket is stale); ``raised(trial_id, TrialFailed, ticket)`` (a rank's exception, held until
  the pool's run has ended); messages with a stale ticket are dropped;
  ``pool_crashed(pool_id, error, lost)`` (its Train run failed: the trial it ran gets ``TrialLost``
  when a worker process or node died, else the exception it raised as ``TrialFailed``; returns
  how many trials the pool took since its run started, or None once the search is over);
  ``pool_failed(pool_id, error)`` (a pool gave up: with none left, every waiting trial fails);
* driver side (``pools.Pools``): ``pool_lost(pool_id, error)`` (the pool's supervisor task died,
  and the Train run it owned with it: the trial gets ``TrialLost``, the run's tickets and
  generation become stale, and the supervisor is started again with the next generation).

A pool's rank 0 talks to the broker and broadcasts each word to the other ranks, so every rank
stops at the same epoch. After a trial that ended (not cut by the search's end) rank 0 writes its
``final.json`` (``checkpoint_policy.write_final``).

Isolation: a trial that raises fails alone: its pool's Train run ends (``max_failures=0``: a rank
may be stuck in a collective the failed one never joined) and the pool starts a fresh run for the
next trial. A worker process or node that dies (``kill -9``, OOM killer, a reclaimed spot node)
ends the run the same way, but the trial did nothing wrong: it gets ``TrialLost`` and its Tune
trainable submits it again from its latest checkpoint (``--max-failures`` times at most), to
whichever pool takes it first. Which of the two happened is read from the run's error
(``ray_compat.worker_lost``), after the run ended: the surviving ranks of a run that lost one fail
too ("Connection closed by peer"), so a rank's exception is held by the broker until then, and the
verdict comes from the rank failures Train recorded before it shut the group down (the ranks a
shutdown unblocks fail in their collectives too, after a rank's own error). A pool
whose runs keep failing before they take any trial (it cannot start) gives up after
``pools.CRASH_RESTARTS`` tries, and the trials fail with its error instead of waiting for ever.
The supervisor of a pool (a Ray task on the driver's node) is watched by the driver: if its
process dies (killed, out of memory), nobody else would tell the broker, and the trial it ran
would wait for ever; the driver does (``pool_lost``) and starts it again. The workers of the run
it owned die with it, but not at once: the tickets keep what they still send out of the trial's
next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

Decision = Literal["continue", "stop", "shutdown"]
CONTINUE: Decision = "continue"
STOP: Decision = "stop"
SHUTDOWN: Decision = "shutdown"  # also what ``take`` returns once the search is over


@dataclass(frozen=True)
class TrialRequest:
    """What a pool needs to run one trial: ``train`` (a TrainConfig dict), the store ``candidate``
    name, a cap on optimisation steps per epoch, the trial's folder (checkpoints are written there),
    the checkpoint to resume from, and the trial folder's URI with a URI ``--out``."""

    train: dict
    candidate: str
    trial_dir: str
    max_train_batches: Optional[int] = None
    resume: Optional[str] = None
    trial_uri: Optional[str] = None


@dataclass(frozen=True)
class Job:
    """A trial as a pool runs it; ``ticket`` names this run of it (set by ``take``): every message
    the pool sends about it carries the ticket, and the broker drops those of a run it gave up on."""

    trial_id: str
    request: TrialRequest
    ticket: int = 0


@dataclass(frozen=True)
class EpochResult:
    metrics: dict


@dataclass(frozen=True)
class TrialDone:
    pass


@dataclass(frozen=True)
class TrialFailed:
    error: str
    traceback: str = ""


@dataclass(frozen=True)
class TrialLost:
    """The trial's worker group lost a process or a node: resume it from its latest checkpoint."""

    error: str


Message = Union[EpochResult, TrialDone, TrialFailed, TrialLost]
