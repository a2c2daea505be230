"""Warm worker pools: many trials on one long-lived Ray Train worker group.

Starting a Ray Train run costs ~15 s on a small machine (controller and worker actors, fresh
processes importing torch and timm, the gloo/nccl group; BENCHMARKS.md), more than a short trial
trains. So a search starts one pool per concurrent trial: a ``TorchTrainer`` whose DDP workers run
``worker.pool_loop`` (take a trial from the broker, run ``worker.train_loop`` on it, take the next).
Each Tune trial (``search.trial_fn``) submits its config to the broker and relays the workers'
per-epoch results to Tune, so ASHA, Optuna, W&B and the run directory see what they see when every
trial is its own ``TorchTrainer`` (``--no-pool``).

Contract of the broker (a Ray actor; every call returns at once or after its timeout):

* trial side: ``submit(trial_id, request)``; ``fetch(trial_id, timeout)`` -> messages
  ``{"type": "result", "metrics"}``, ``{"type": "done"}``, ``{"type": "error", "error"}``;
  ``decide(trial_id, epoch, "continue")`` once Tune took an epoch's result;
  ``stop(trial_id)`` when Tune ended the trial (the search's callback calls it);
* pool side: ``take(pool_id, timeout)`` -> ``(trial_id, request)``, ``None`` (nothing yet) or
  ``"shutdown"``; ``post(trial_id, message)``; ``wait_decision(trial_id, epoch, timeout)`` ->
  ``"continue"``, ``"stop"`` or ``"shutdown"`` (the search is ending: the trial goes on at ``--resume``);
  ``pool_crashed(pool_id, error)`` (its Train run failed: the trial it ran fails; returns how many
  trials the pool took since it started, or None once the search is over);
  ``pool_failed(pool_id, error)`` (a pool gave up: with none left, every waiting trial fails).

Isolation: a trial that raises fails alone: its pool's Train run ends (``max_failures=0``: a rank
may be stuck in a collective the failed one never joined) and ``_run_pool`` starts a fresh one for
the next trial. A worker process that dies (OOM-killed, segfault) fails its trial the same way. A
pool whose runs keep failing before they take any trial (it cannot start) gives up after
``CRASH_RESTARTS`` tries, and the trials fail with its error instead of waiting for ever.
"""

from __future__ import annotations

import collections
import itertools
import threading

import ray

CRASH_RESTARTS = 2  # a pool gives up after this many failed starts in a row without taking a trial


@ray.remote(num_cpus=0, max_concurrency=1000)
class Broker:
    """Hands trials to pools and results back to trials (see the module docstring)."""

    def __init__(self, n_pools: int):
        self._cv = threading.Condition()
        self._pending = collections.deque()        # (trial_id, request), oldest first
        self._running: dict[int, str] = {}         # pool -> trial it runs
        self._taken = collections.Counter()        # pool -> trials taken since its run started
        self._inbox = collections.defaultdict(list)
        self._decision: dict[str, object] = {}     # trial -> (epoch, "continue") | "stop"
        self._alive = set(range(n_pools))
        self._failure: str | None = None
        self._closed = False

    # trial side ---------------------------------------------------------
    def submit(self, trial_id: str, request: dict) -> None:
        with self._cv:
            self._inbox.pop(trial_id, None)
            self._decision.pop(trial_id, None)
            if self._failure:
                self._inbox[trial_id].append({"type": "error", "error": self._failure})
            else:
                self._pending.append((trial_id, request))
            self._cv.notify_all()

    def fetch(self, trial_id: str, timeout: float) -> list[dict]:
        with self._cv:
            self._cv.wait_for(lambda: self._inbox.get(trial_id), timeout)
            return self._inbox.pop(trial_id, [])

    def decide(self, trial_id: str, epoch: int, decision: str) -> None:
        with self._cv:
            if self._decision.get(trial_id) != "stop":
                self._decision[trial_id] = (epoch, decision) if decision == "continue" else "stop"
            self._cv.notify_all()

    def stop(self, trial_id: str) -> None:
        with self._cv:
            self._decision[trial_id] = "stop"
            self._pending = collections.deque(x for x in self._pending if x[0] != trial_id)
            self._inbox.pop(trial_id, None)
            self._cv.notify_all()

    # pool side ----------------------------------------------------------
    def take(self, pool_id: int, timeout: float):
        with self._cv:
            self._cv.wait_for(lambda: self._pending or self._closed, timeout)
            if self._closed:
                return "shutdown"
            if not self._pending:
                return None
            trial_id, request = self._pending.popleft()
            self._running[pool_id] = trial_id
            self._taken[pool_id] += 1
            return trial_id, request

    def post(self, trial_id: str, message: dict) -> None:
        with self._cv:
            if self._decision.get(trial_id) != "stop":  # nobody listens to a stopped trial
                self._inbox[trial_id].append(message)
            if message["type"] != "result":
                self._running = {p: t for p, t in self._running.items() if t != trial_id}
            self._cv.notify_all()

    def wait_decision(self, trial_id: str, epoch: int, timeout: float) -> str:
        """``"continue"``; ``"stop"`` (Tune ended the trial, or no word within ``timeout``); or
        ``"shutdown"`` (the search is ending, e.g. interrupted: the trial did not end, and
        ``--resume`` continues it)."""
        def decided():
            d = self._decision.get(trial_id)
            return self._closed or d == "stop" or (d is not None and d[0] >= epoch)

        with self._cv:
            ok = self._cv.wait_for(decided, timeout)
            if self._closed:
                return "shutdown"
            return "continue" if ok and self._decision.get(trial_id) != "stop" else "stop"

    def pool_crashed(self, pool_id: int, error: str) -> int | None:
        with self._cv:
            self._orphan(pool_id, f"its worker group failed: {error}")
            taken, self._taken[pool_id] = self._taken[pool_id], 0
            return None if self._closed else taken

    def pool_failed(self, pool_id: int, error: str) -> None:
        with self._cv:
            self._alive.discard(pool_id)
            self._orphan(pool_id, f"its worker pool failed: {error}")
            if not self._alive:
                self._failure = f"every worker pool failed; the last: {error}"
                for trial_id, _ in self._pending:
                    self._inbox[trial_id].append({"type": "error", "error": self._failure})
                self._pending.clear()
            self._cv.notify_all()

    def _orphan(self, pool_id: int, why: str) -> None:
        trial_id = self._running.pop(pool_id, None)
        if trial_id is not None:
            self._inbox[trial_id].append({"type": "error", "error": f"trial {trial_id} failed: {why}"})
            self._cv.notify_all()

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


@ray.remote(num_cpus=0)
def _run_pool(pool_id: int, broker, index, scaling: dict, storage: str, name: str, fault=None) -> None:
    """Run one pool's TorchTrainer until the broker shuts it down; after a failure start a fresh
    one, unless the pool keeps failing without taking a trial (then tell the broker it gave up)."""
    from ray.train import FailureConfig, RunConfig

    from dfsearch.train import _trainer_class, pool_loop_per_worker, scaling_config

    idle_failures = 0
    for attempt in itertools.count():
        error = None
        try:
            result = _trainer_class()(
                pool_loop_per_worker, train_loop_config={"broker": broker, "pool_id": pool_id, "index": index,
                                                         "fault": fault},
                scaling_config=scaling_config(**scaling),
                run_config=RunConfig(name=f"{name}-{attempt}", storage_path=storage,
                                     failure_config=FailureConfig(max_failures=0)),
            ).fit()
            error = result.error
        except Exception as e:  # Train V2 raises when a run fails
            error = e
        if error is None:
            return  # the broker said shutdown
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        text = f"{type(error).__name__}: {lines[-1][:300] if lines else ''}"  # the root cause comes last
        taken = ray.get(broker.pool_crashed.remote(pool_id, text))
        if taken is None:
            return
        idle_failures = 0 if taken else idle_failures + 1
        if idle_failures > CRASH_RESTARTS:
            ray.get(broker.pool_failed.remote(pool_id, text))
            return


def broker(name: str):
    """The broker actor named ``name`` (trials and callbacks hold the name, never the handle: a
    handle pickled into Tune's experiment state would not unpickle after a restart)."""
    return ray.get_actor(name)


class Pools:
    """``n`` warm pools and their broker: ``Pools(...)``, hand ``.broker_name`` to the trials,
    ``close()``."""

    def __init__(self, n: int, *, index, workers: int, use_gpu: bool, cpus_per_worker: float,
                 gpus_per_worker: float, storage: str, name: str, fault: dict | None = None):
        self.broker_name = f"dfsearch-broker-{name}"
        self.broker = Broker.options(name=self.broker_name).remote(n)
        scaling = dict(workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker)
        self.refs = [_run_pool.remote(i, self.broker, index, scaling, storage, f"{name}-pool{i}", fault)
                     for i in range(n)]

    def close(self, timeout: float = 120.0) -> None:
        """End every pool (each finishes its current step and returns, freeing its resources)."""
        try:
            ray.get(self.broker.shutdown.remote(), timeout=10)
            _, stuck = ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout)
        except Exception:
            stuck = self.refs
        for ref in stuck:  # only unfinished ones: cancelling a finished task trips a check in Ray 2.60's core
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
