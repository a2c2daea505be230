"""Where a trial trains, behind one interface: a backend's ``epochs(trial_id, train_cfg)`` is the
trial's stream of per-epoch results; the trainable hands each to Tune. When Tune stops reading
(ASHA stopped the trial) the trainable ends and the backend with it.

* ``PoolBackend`` (the default): a warm pool (``dfsearch.pool``) runs the trial; the stream is the
  broker's messages (``dfsearch.pool.protocol``), each epoch acknowledged once Tune took it;
* ``TrainerBackend`` (``--no-pool``): the trial's own ``TorchTrainer`` (``dfsearch.train``), run in
  a thread; a Ray Train ``UserCallback`` puts each report on a Ray queue the stream reads.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterator

from ray.train import UserCallback

from dfsearch import checkpoint_policy, remote


class TrialError(RuntimeError):
    """A trial's training raised (the message is the worker's error)."""


class PoolBackend:
    def __init__(self, setup, index):
        self.setup, self.index = setup, index

    def epochs(self, trial_id: str, train_cfg) -> Iterator[dict]:
        """The trial's epochs from whichever pool runs it. A trial whose worker group lost a
        process or node (``TrialLost``) is submitted again from its latest checkpoint, up to
        ``setup.max_failures`` times; every result after that says so (``retries``,
        ``resumed_from``: the epochs it resumed from, comma-separated), and so does the trials table."""
        import ray

        from dfsearch.pool.broker import get_broker
        from dfsearch.pool.protocol import CONTINUE, EpochResult, TrialDone, TrialLost

        s = self.setup
        trial_dir = Path(s.train_storage) / trial_id
        trial_uri = remote.join(s.remote, "train", trial_id) if s.remote else None
        self._pull(trial_dir, trial_uri)
        final = checkpoint_policy.read_final(trial_dir)
        if final is not None:  # it had ended before the search was killed: say so again, train nothing
            yield final
            return
        broker = get_broker(s.broker)
        retried: list[int] = []
        # resumes a search killed while it ran; seen: the last epoch Tune took (or that the trial resumed from)
        seen = self._submit(broker, trial_id, train_cfg, trial_dir, trial_uri)
        while True:
            for m in ray.get(broker.fetch.remote(trial_id, 10.0)):
                if isinstance(m, EpochResult):
                    yield {**m.metrics, **retry_record(retried)}
                    seen = m.metrics["epoch"]
                    broker.decide.remote(trial_id, m.metrics["epoch"], CONTINUE)
                elif isinstance(m, TrialDone):
                    return
                elif isinstance(m, TrialLost):
                    if len(retried) >= s.max_failures:
                        raise TrialError(f"{m.error} ({len(retried) + 1} times; --max-failures {s.max_failures})")
                    self._pull(trial_dir, trial_uri)  # the checkpoints the lost node had copied there
                    checkpoint_policy.drop_after(trial_dir, seen)
                    retried.append(self._submit(broker, trial_id, train_cfg, trial_dir, trial_uri))
                    print(f"dfsearch: {m.error}; retry {len(retried)}/{s.max_failures} from epoch {retried[-1]}",
                          file=sys.stderr)
                else:
                    if m.traceback:
                        print(m.traceback, file=sys.stderr)
                    raise TrialError(m.error)

    def _submit(self, broker, trial_id, train_cfg, trial_dir: Path, trial_uri) -> int:
        """Queue the trial from its latest checkpoint, if any; returns that checkpoint's epoch (0: none)."""
        import ray

        from dfsearch.pool.protocol import TrialRequest

        resume = checkpoint_policy.latest(trial_dir)
        ray.get(broker.submit.remote(trial_id, TrialRequest(
            train=train_cfg.model_dump(), candidate=trial_id, trial_dir=str(trial_dir),
            max_train_batches=self.setup.profile.steps_per_epoch, resume=str(resume) if resume else None,
            trial_uri=trial_uri)))
        return checkpoint_policy.epoch_of(resume) if resume else 0

    @staticmethod
    def _pull(trial_dir: Path, trial_uri: str | None) -> None:
        if trial_uri:  # this trial's folder as whichever node last trained it left it
            remote.try_pull(remote.open_uri(trial_uri), trial_dir, f"trial {trial_dir.name}")


def retry_record(retried: list[int]) -> dict:
    """What a result says of a trial's retries: none, or how many and the epochs it resumed from."""
    return {"retries": len(retried), "resumed_from": ",".join(map(str, retried))} if retried else {}


class TrainerBackend:
    def __init__(self, setup, index):
        self.setup, self.index = setup, index

    def epochs(self, trial_id: str, train_cfg) -> Iterator[dict]:
        from queue import Empty

        from ray.util.queue import Queue

        from dfsearch.train import fit_trial

        s = self.setup
        reports = Queue(actor_options={"num_cpus": 0})
        done: dict = {}

        def fit():
            try:
                done["result"] = fit_trial(
                    train_cfg, self.index, workers=s.profile.workers_per_trial, use_gpu=s.use_gpu,
                    cpus_per_worker=s.cpus_per_worker, gpus_per_worker=s.gpus_per_worker or 1.0,
                    storage=s.train_storage, name=trial_id, candidate=trial_id,
                    max_train_batches=s.profile.steps_per_epoch, callbacks=[QueueReports(reports)])
            except BaseException as e:  # Train V2 raises when a run fails
                done["error"] = e

        thread = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
        thread.start()
        # if Tune stops reading (ASHA), the trainable ends and the run with it: nothing to wait for
        while thread.is_alive() or not reports.empty():
            try:
                yield reports.get(timeout=1.0)
            except Empty:
                continue
        thread.join()
        error = done.get("error") or getattr(done.get("result"), "error", None)
        if error is not None:
            raise TrialError(str(error)) from error


class QueueReports(UserCallback):
    """Ray Train callback (it runs in the run's controller): every report, rank 0's metrics, on a queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(dict(metrics[0]))


def make_backend(setup, index):
    return PoolBackend(setup, index) if setup.broker else TrainerBackend(setup, index)
