"""Start and end the warm pools of a search: ``Pools(n, ...)`` starts the broker and ``n`` pools
(each a ``TorchTrainer`` run of ``runner.pool_loop`` in a supervisor task, restarted after a failed
trial; the supervisor itself restarted if its process dies), hands ``.broker_name`` to the trials,
and ``close()`` ends them."""

from __future__ import annotations

import itertools
import sys
import threading
import time

import ray

from dfsearch.cluster import free_placement_group
from dfsearch.pool.broker import Broker

CRASH_RESTARTS = 2  # a pool gives up after this many failed starts in a row without taking a trial
WAIT_FOR_ROOM_S = 600.0  # ...or after this long of starts that found no room for its workers (a lost
                         # node, an autoscaler still starting one) without taking a trial
WATCH_S = 2.0  # the driver looks at the pools' supervisor tasks this often


def pool_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point of a pool; see ``dfsearch.pool.runner.pool_loop`` (imported here, so
    that unpickling this function, as Train's controller does, imports nothing heavy)."""
    from dfsearch.pool.runner import pool_loop

    pool_loop(cfg)


def _error_text(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:300] if lines else ''}"  # the root cause comes last


@ray.remote(num_cpus=0, max_retries=0)
def _run_pool(pool_id: int, generation: int, broker, index, scaling: dict, storage: str, name: str) -> None:
    """Run one pool's TorchTrainer until the broker shuts it down; after a failure start a fresh
    one, unless the pool keeps failing without taking a trial (then tell the broker it gave up):
    ``CRASH_RESTARTS`` failures of its own, or ``WAIT_FOR_ROOM_S`` of starts that found no room.
    Every failure ends the run (no retry inside Ray Train, preemption and start-up included): the
    broker must hear of each, to fail or resubmit the trial the run had."""
    import time

    from ray.train import FailureConfig, RunConfig

    from dfsearch.cluster import scaling_config
    from dfsearch.ray_compat import startup_waiting, trainer_class, worker_lost

    idle_failures, waiting_since = 0, None
    for attempt in itertools.count():
        try:
            error = trainer_class()(
                pool_loop_per_worker,
                train_loop_config={"broker": broker, "pool_id": pool_id, "generation": generation, "index": index},
                scaling_config=scaling_config(**scaling),
                run_config=RunConfig(name=f"{name}-{attempt}", storage_path=storage,
                                     failure_config=FailureConfig(max_failures=0, max_preemption_failures=0,
                                                                  controller_failure_limit=0)),
            ).fit().error
        except Exception as e:  # Train V2 raises when a run fails
            error = e
        if error is None:
            return  # the broker said shutdown
        text = _error_text(error)
        taken = ray.get(broker.pool_crashed.remote(pool_id, text, worker_lost(error)))
        if taken is None:
            return
        if taken:
            idle_failures, waiting_since = 0, None
        elif startup_waiting(error):
            waiting_since = waiting_since or time.monotonic()
        else:
            idle_failures += 1
        if idle_failures > CRASH_RESTARTS or (waiting_since and time.monotonic() - waiting_since > WAIT_FOR_ROOM_S):
            ray.get(broker.pool_failed.remote(pool_id, text))
            return


def _ended_why(ref) -> str | None:
    """Why a pool's supervisor task ended, or None when it returned (it ended its pool itself)."""
    try:
        ray.get(ref)
        return None
    except ray.exceptions.RayTaskError as e:  # its own code raised
        return f"its supervisor failed ({_error_text(e)})"
    except Exception as e:  # its process died (WorkerCrashedError, Ray's OutOfMemoryError)
        return f"its supervisor process died ({_error_text(e)})"


def driver_node():
    """A scheduling strategy that keeps a task or actor on this (the driver's) node: Ray would
    otherwise place these zero-CPU helpers on any node, a spot worker included, whose loss would
    take the pool (Train puts a run's controller on the node that calls ``fit()``) or the broker
    with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


class Pools:
    """``n`` warm pools and their broker."""

    def __init__(self, n: int, *, index, workers: int, use_gpu: bool, cpus_per_worker: float,
                 gpus_per_worker: float, storage: str, name: str):
        self.broker_name = f"dfsearch-broker-{name}"
        here = driver_node()  # the broker and each pool's Train controller live and die with the search's driver
        self.broker = Broker.options(name=self.broker_name, scheduling_strategy=here).remote(n)
        scaling = dict(workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker)

        def start(i: int, generation: int):
            return _run_pool.options(scheduling_strategy=here).remote(
                i, generation, self.broker, index, scaling, storage, f"{name}-pool{i}-g{generation}")

        self.refs = [start(i, 0) for i in range(n)]
        self._closing, self._lock = threading.Event(), threading.Lock()
        self._watcher = threading.Thread(target=self._watch, args=(start,), name="dfsearch-pools", daemon=True)
        self._watcher.start()

    def _watch(self, start) -> None:
        """Start a pool's supervisor again when it ended without being told to (its process
        killed: ``kill -9``, the OOM killer): Ray ends the Train run it owned, and nobody else
        would tell the broker, whose trial would wait for ever. ``CRASH_RESTARTS`` deaths in a
        row without taking a trial: the pool fails (as one that cannot start). A supervisor that
        returned has ended its pool itself."""
        watched, deaths = dict(enumerate(self.refs)), dict.fromkeys(range(len(self.refs)), 0)
        while watched and not self._closing.is_set():
            try:
                ready, _ = ray.wait(list(watched.values()), num_returns=1, timeout=WATCH_S)
                for i in [i for i, ref in watched.items() if ref in ready]:
                    why = _ended_why(watched.pop(i))
                    if why is not None:
                        deaths[i] = self._restart(i, why, deaths[i], start, watched)
            except Exception as e:  # the watch must go on: without it a lost pool's trial waits for ever
                if not self._closing.is_set():
                    print(f"dfsearch: watching the worker pools: {_error_text(e)}", file=sys.stderr)
                    time.sleep(WATCH_S)

    def _restart(self, i: int, why: str, deaths: int, start, watched: dict) -> int:
        """Tell the broker that pool ``i`` lost its supervisor, free the placement group its dead
        run left reserved, start the supervisor again; returns its deaths in a row without a trial."""
        taken, generation, pg = ray.get(self.broker.pool_lost.remote(i, why))
        if pg:  # the dead run's worker group still holds its CPUs/GPUs: the next run needs them
            try:
                free_placement_group(pg)
            except Exception as e:
                print(f"dfsearch: worker pool {i}: could not free its placement group: {e}", file=sys.stderr)
        if taken is None:  # the search is over
            return deaths
        deaths = 0 if taken else deaths + 1
        if deaths > CRASH_RESTARTS:
            ray.get(self.broker.pool_failed.remote(i, why))
            return deaths
        with self._lock:  # close() sets _closing under it: no supervisor starts after close() began
            if not self._closing.is_set():
                print(f"dfsearch: worker pool {i}: {why}; starting it again", file=sys.stderr)
                self.refs[i] = watched[i] = start(i, generation)
        return deaths

    def close(self, timeout: float = 120.0) -> None:
        """End every pool (each finishes its current step and returns, freeing its resources)."""
        with self._lock:
            self._closing.set()
        try:
            restarting = ray.get(self.broker.shutdown.remote(), timeout=10)
            waiting = [r for i, r in enumerate(self.refs) if i not in restarting]
            _, stuck = ray.wait(waiting, num_returns=len(waiting), timeout=timeout) if waiting else ([], [])
            if restarting:  # unfinished ones only: cancelling a finished task trips a check in Ray 2.60's core
                stuck += ray.wait([self.refs[i] for i in restarting], num_returns=len(restarting), timeout=0)[1]
        except Exception:
            stuck = self.refs
        for ref in stuck:  # only unfinished ones: cancelling a finished task trips a check in Ray 2.60's core
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
