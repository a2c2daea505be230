"""The pool side of the protocol (``dfsearch.pool.protocol``), on each DDP worker of a pool:
``pool_loop`` takes trial after trial from the broker and runs each with ``run_trial``, which
calls the ordinary ``worker.train_loop`` with a ``PoolSession``."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import shutil
import traceback
from dataclasses import asdict
from pathlib import Path

import ray

from dfsearch import checkpoint_policy, remote
from dfsearch.cluster import free_placement_group
from dfsearch.pool.protocol import CONTINUE, SHUTDOWN, EpochResult, Job, TrialDone, TrialFailed

IDLE_POLL_S = 30.0      # an idle pool's rank 0 asks for work this often (and keeps the other ranks in step)
DECISION_TIMEOUT_S = 900.0  # no word from the trial's Tune trainable for this long: stop the trial


class PoolSession:
    """One trial on a warm pool, as ``worker.train_loop`` sees it. Resumes from the checkpoint its
    request names; rank 0 writes checkpoints straight into the trial's folder
    (``checkpoint_eNNNN``, renamed into place when complete; ``checkpoint_policy.prune`` keeps the
    best, the one before and the latest: at most three while it runs, the best once it ended),
    sends each epoch's metrics to the broker and waits for the word, which it broadcasts so that
    every rank stops at the same epoch."""

    pg_id = ""  # the pool's placement group outlives this trial: nobody may free it

    def __init__(self, broker, job: Job, rank: int):
        self.broker, self.trial_id, self.ticket, self.rank = broker, job.trial_id, job.ticket, rank
        self.trial_dir, self._resume = Path(job.request.trial_dir), job.request.resume
        self.last: dict | None = None  # the last result sent (rank 0)
        self.cut = False  # rank 0: this run did not end the trial (the search ended: --resume continues it; or the
                          # broker gave this run up: the trial runs again): no final.json
        self.target = None  # a URI --out: the trial's folder there (rank 0 copies each checkpoint to it)
        self.fetched = False  # this copy holds all that is there: pruning may delete there too
        if job.request.trial_uri:
            self.target = remote.open_uri(job.request.trial_uri)
            self.fetched = remote.try_pull(self.target, self.trial_dir, f"trial {self.trial_id}")  # trained elsewhere?

    def push(self) -> None:
        if self.target is not None and self.rank == 0:
            remote.try_push(self.trial_dir, self.target, f"trial {self.trial_id}", delete=self.fetched)

    @contextlib.contextmanager
    def resume(self):
        yield self._resume

    @contextlib.contextmanager
    def checkpoint_dir(self, epoch: int):
        d = self.trial_dir / f".partial_e{epoch:04d}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        try:
            yield str(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)  # gone already if it was reported

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> bool:
        from dfsearch.worker import broadcast

        go = True
        if self.rank == 0:
            word = self._send(metrics, checkpoint_dir)
            self.cut, go = word == SHUTDOWN, word == CONTINUE
        return broadcast(go)

    def _send(self, metrics: dict, checkpoint_dir: str | None) -> str:
        """Rank 0: put the epoch's checkpoint in place, post its metrics, wait for the word. A post
        the broker refuses (it gave this run up: its supervisor died) takes the checkpoint back,
        and the run writes nothing more: the trial runs again from an epoch the search took."""
        metrics = dict(metrics)
        final = None
        if checkpoint_dir:
            # pruned before this epoch's is in: the latest one kept is then the last the search took
            # (where a retry resumes if this result is refused), beside the best and this one
            checkpoint_policy.prune(self.trial_dir, running=True)
            final = self.trial_dir / f"checkpoint_e{int(metrics['epoch']):04d}"
            shutil.rmtree(final, ignore_errors=True)
            os.replace(checkpoint_dir, final)
            metrics["checkpoint_path"] = str(final)
            self.push()  # before the result: a trial lost after it resumes elsewhere from what reached --out
        if not ray.get(self.broker.post.remote(self.trial_id, EpochResult(metrics), self.ticket)):
            if final is not None:
                shutil.rmtree(final, ignore_errors=True)
            return SHUTDOWN
        self.last = metrics
        return ray.get(self.broker.wait_decision.remote(self.trial_id, metrics["epoch"], DECISION_TIMEOUT_S,
                                                        self.ticket))


def run_trial(broker, job: Job, index, rank: int) -> None:
    """Run one trial on this worker and tell the broker how it ended. A trial that raises hands
    the broker its error and re-raises: that ends this Train run (another rank may be stuck in a
    collective the failed one never joined), the pool starts a fresh one (``pools._run_pool``) and
    the broker then fails the trial with this error, unless the run had lost a worker (this
    exception is then collateral damage, and the trial resumes elsewhere)."""
    from dfsearch.worker import train_loop

    session = PoolSession(broker, job, rank)
    try:
        train_loop({**asdict(job.request), "index": index}, session)
    except BaseException as e:
        with contextlib.suppress(Exception):
            ray.get(broker.raised.remote(job.trial_id, TrialFailed(f"{type(e).__name__}: {e}", traceback.format_exc()),
                                         job.ticket))
        raise
    if rank == 0:
        if session.last is not None and not session.cut:  # it ended (not cut short by the search's end)
            checkpoint_policy.write_final(session.trial_dir, session.last)
            session.push()  # (a cut trial's checkpoints were copied as they were written)
        ray.get(broker.post.remote(job.trial_id, TrialDone(), job.ticket))


def pool_loop(cfg: dict) -> None:
    """Per-worker entry point of a warm pool: take a trial from the broker, run it, take the next,
    until the broker says the search is over. ``cfg``: ``{"broker": actor handle, "pool_id": int,
    "generation": int, "index": DatasetIndex json or ObjectRef}``."""
    import ray.train
    import torch

    from dfsearch.worker import resolve_index, broadcast

    broker = cfg["broker"]
    rank = ray.train.get_context().get_world_rank()
    pg = ray.util.get_current_placement_group()
    pg_hex = pg.id.hex() if pg is not None else ""
    # the driver frees this run's placement group if its supervisor dies (nobody else would then);
    # a run that starts after that was declared (stale) frees its own and ends
    started = ray.get(broker.pool_started.remote(cfg["pool_id"], cfg["generation"], pg_hex)) if rank == 0 else None
    if not broadcast(started):
        if rank == 0 and pg_hex:
            free_placement_group(pg_hex)
        return
    index = resolve_index(cfg["index"])
    take = functools.partial(broker.take.remote, cfg["pool_id"], IDLE_POLL_S, cfg["generation"])
    while True:
        job = broadcast(ray.get(take()) if rank == 0 else None)
        if job is None:
            continue
        if job == SHUTDOWN:
            return
        run_trial(broker, job, index, rank)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
