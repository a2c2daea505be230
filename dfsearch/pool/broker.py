"""The broker: a Ray actor that hands trials to pools and results back to trials. Its contract
and messages are in ``dfsearch.pool.protocol``."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading

import ray

from dfsearch.pool.protocol import (CONTINUE, SHUTDOWN, STOP, Decision, EpochResult, Job, Message, TrialFailed,
                                    TrialLost, TrialRequest)


class BrokerState:
    """The broker's logic, a plain class (``Broker`` is this as a Ray actor; tests drive it directly)."""

    def __init__(self, n_pools: int):
        self._cv = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()  # oldest first
        self._running: dict[int, str] = {}         # pool -> trial it runs
        self._tickets = itertools.count(1)
        self._ticket: dict[str, int] = {}          # trial -> the ticket of the run it is on now
        self._generation = collections.Counter()   # pool -> its supervisor's generation (bumped by pool_lost)
        self._pg: dict[int, str] = {}              # pool -> its current run's placement group (hex id)
        self._taken = collections.Counter()        # pool -> trials taken since its run started
        self._inbox: dict[str, list[Message]] = collections.defaultdict(list)
        self._decision: dict[str, object] = {}     # trial -> (epoch, CONTINUE) | STOP
        self._raised: dict[str, TrialFailed] = {}  # trial -> a rank's exception, until its pool's run ended
        self._alive = set(range(n_pools))
        self._restarting: set[int] = set()         # pools between a failed run and their next take()
        self._failure: str | None = None
        self._closed = False

    # trial side ---------------------------------------------------------
    def submit(self, trial_id: str, request: TrialRequest) -> None:
        with self._cv:
            self._inbox.pop(trial_id, None)
            self._decision.pop(trial_id, None)
            self._raised.pop(trial_id, None)
            if self._failure:
                self._inbox[trial_id].append(TrialFailed(self._failure))
            else:
                self._pending.append(Job(trial_id, request))
            self._cv.notify_all()

    def fetch(self, trial_id: str, timeout: float) -> list[Message]:
        with self._cv:
            self._cv.wait_for(lambda: self._inbox.get(trial_id), timeout)
            return self._inbox.pop(trial_id, [])

    def decide(self, trial_id: str, epoch: int, decision: Decision) -> None:
        with self._cv:
            if self._decision.get(trial_id) != STOP:
                self._decision[trial_id] = (epoch, decision) if decision == CONTINUE else STOP
            self._cv.notify_all()

    def stop(self, trial_id: str) -> None:
        with self._cv:
            self._decision[trial_id] = STOP
            self._pending = collections.deque(j for j in self._pending if j.trial_id != trial_id)
            self._inbox.pop(trial_id, None)
            self._cv.notify_all()

    # pool side ----------------------------------------------------------
    def pool_started(self, pool_id: int, generation: int, pg_hex: str) -> bool:
        """A pool's run started in placement group ``pg_hex``; False: the run is stale (its
        supervisor was declared dead meanwhile): it must free its group and end."""
        with self._cv:
            if generation != self._generation[pool_id]:
                return False
            self._pg[pool_id] = pg_hex
            return True

    def take(self, pool_id: int, timeout: float, generation: int = 0) -> Job | str | None:
        def stale():
            return generation != self._generation[pool_id]

        with self._cv:
            if not stale():
                self._restarting.discard(pool_id)
            self._cv.wait_for(lambda: self._pending or self._closed or stale(), timeout)
            if self._closed or stale():  # a run whose supervisor died, if it still runs: it must end
                return SHUTDOWN
            if not self._pending:
                return None
            job = dataclasses.replace(self._pending.popleft(), ticket=next(self._tickets))
            self._running[pool_id] = job.trial_id
            self._ticket[job.trial_id] = job.ticket
            self._taken[pool_id] += 1
            return job

    def current(self, trial_id: str, ticket: int) -> bool:
        """Whether ``ticket`` is the trial's current run (else it is a run the broker gave up on:
        a pool whose supervisor died, its workers not yet gone)."""
        with self._cv:
            return self._ticket.get(trial_id) == ticket

    def post(self, trial_id: str, message: Message, ticket: int) -> bool:
        """Deliver ``message`` to the trial; False (dropped) when ``ticket`` is stale."""
        with self._cv:
            if not self.current(trial_id, ticket):
                return False
            if self._decision.get(trial_id) != STOP:  # nobody listens to a stopped trial
                self._inbox[trial_id].append(message)
            if not isinstance(message, EpochResult):
                self._running = {p: t for p, t in self._running.items() if t != trial_id}
                self._ticket.pop(trial_id, None)
            self._cv.notify_all()
            return True

    def raised(self, trial_id: str, failure: TrialFailed, ticket: int) -> None:
        with self._cv:
            if self.current(trial_id, ticket):
                self._raised.setdefault(trial_id, failure)  # the first rank's: the others' may be collateral

    def wait_decision(self, trial_id: str, epoch: int, timeout: float, ticket: int) -> Decision:
        def decided():
            d = self._decision.get(trial_id)
            return self._closed or not self.current(trial_id, ticket) or d == STOP or (d is not None and d[0] >= epoch)

        with self._cv:
            ok = self._cv.wait_for(decided, timeout)
            if self._closed or not self.current(trial_id, ticket):  # SHUTDOWN: it must not write final.json
                return SHUTDOWN
            return CONTINUE if ok and self._decision.get(trial_id) != STOP else STOP

    def pool_crashed(self, pool_id: int, error: str, lost: bool = False) -> int | None:
        with self._cv:
            self._orphan(pool_id, f"its worker group failed: {error}", lost)
            self._restarting.add(pool_id)
            taken, self._taken[pool_id] = self._taken[pool_id], 0
            return None if self._closed else taken

    def pool_lost(self, pool_id: int, error: str) -> tuple[int | None, int, str]:
        """The pool's supervisor (``pools._run_pool``) died, and with it the Train run it owned:
        its trial gets ``TrialLost``; messages and takes of that run from now on are stale.
        Returns ``pool_crashed``'s count, the generation the restarted supervisor must use and
        the lost run's placement group (nobody else frees it), or ''."""
        with self._cv:
            self._generation[pool_id] += 1
            self._cv.notify_all()  # a stale take() waiting inside returns SHUTDOWN
            taken = self.pool_crashed(pool_id, error, lost=True)
            return taken, self._generation[pool_id], self._pg.pop(pool_id, "")

    def pool_failed(self, pool_id: int, error: str) -> None:
        with self._cv:
            self._alive.discard(pool_id)
            self._orphan(pool_id, f"its worker pool failed: {error}")
            if not self._alive:
                self._failure = f"every worker pool failed; the last: {error}"
                for job in self._pending:
                    self._inbox[job.trial_id].append(TrialFailed(self._failure))
                self._pending.clear()
            self._cv.notify_all()

    def _orphan(self, pool_id: int, why: str, lost: bool = False) -> None:
        trial_id = self._running.pop(pool_id, None)
        if trial_id is None:
            return
        self._ticket.pop(trial_id, None)
        raised = self._raised.pop(trial_id, None)
        if self._decision.get(trial_id) == STOP:
            pass  # Tune ended it already: nobody listens
        elif lost:
            self._inbox[trial_id].append(TrialLost(f"trial {trial_id} lost a worker: {why}"))
        else:
            self._inbox[trial_id].append(raised or TrialFailed(f"trial {trial_id} failed: {why}"))
        self._cv.notify_all()

    def shutdown(self) -> list[int]:
        """End the search; returns the pools still restarting after a failed run (one that lost
        its node may wait for resources that never come back: nothing to wait for)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            return sorted(self._restarting & self._alive)


Broker = ray.remote(num_cpus=0, max_concurrency=1000)(BrokerState)


def get_broker(name: str):
    """The broker actor named ``name`` (trials and callbacks hold the name, never the handle: a
    handle pickled into Tune's experiment state would not unpickle after a restart)."""
    return ray.get_actor(name)
