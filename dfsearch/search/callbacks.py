"""Tune callbacks of a search (driver side), one job each; none ever raises into Tune.

* ``TellPoolsTrialEnded``: a trial Tune ended (ASHA, the budget, an error) stops on its pool;
* ``FreePlacementGroups``: removes a finished ``--no-pool`` trial's worker-group placement group
  (Tune kills the trainable, and with it the Train controller that would have removed it; Ray's
  own cleaner needs the dashboard's State API, which a ``ray[tune,train]`` install lacks);
* ``KeepBestCheckpoint``: once a trial ended, deletes all its checkpoints but the best
  (``checkpoint_policy.prune``), there and, with a URI ``--out``, in the bucket;
* ``ProgressLog``: one line per ended trial in ``trials_progress.jsonl``, as they end;
* ``ShowProgress``: feeds the terminal's live view (``console.SearchProgress``);
* ``WandbTrials``: each trial its own W&B run (config, per-epoch metrics, status);
* ``SyncRunFolder``: with a URI ``--out``, copies the driver's files there as the search goes.

Tune pickles callbacks into its experiment state and, on ``--resume``, restores those objects
(with ``get_state``). What belongs to one run of the driver (the broker's name, the W&B runs, the
bucket) is not pickled: each callback binds to the ``LiveRun`` of the driver that runs it in
``setup``, which Tune calls when ``fit()`` starts (``bound``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback

from dfsearch import checkpoint_policy, remote, tracking
from dfsearch.cluster import free_placement_group

PROGRESS_FILE = "trials_progress.jsonl"  # one line per finished trial, written as they finish
FREE_GRACE_S = 3.0  # how long a finished trial's Train controller gets to remove its placement group
WANDB_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "test_acc", "test_auc",
              "train_time_s", "epoch_time_s", "skipped_files", "retries")


@dataclass
class LiveRun:
    """What the callbacks of this driver process work with."""

    run_dir: Path
    space: object
    profile: object
    seed: int
    wandb_mode: str
    wandb_project: str
    group: str                         # the search's name
    broker: str | None = None          # warm pools: the broker's name
    target: remote.Remote | None = None  # a URI --out
    wandb_runs: dict = field(default_factory=dict)  # trial -> its open W&B run
    progress: object = None            # console.SearchProgress: the terminal's live view
    dataset_artifact: str | None = None  # the W&B dataset artifact's name (tracking.write_dataset_manifest)

    def close(self) -> None:
        """Finish the W&B runs a stopped ``fit()`` left open (trials that did not end)."""
        for tid in list(self.wandb_runs):
            tracking.finish(self.wandb_runs.pop(tid))

    @property
    def train_storage(self) -> Path:
        return self.run_dir / "train"


_LIVE: LiveRun | None = None


@contextlib.contextmanager
def bound(live: LiveRun):
    """While ``Tuner.fit()`` runs: the callbacks' ``LiveRun``."""
    global _LIVE
    _LIVE = live
    try:
        yield live
    finally:
        _LIVE = None


def _warn(what: str, e: Exception) -> None:
    print(f"dfsearch: {what}: {type(e).__name__}: {e}", file=sys.stderr)


class _Bound(Callback):
    live: LiveRun | None = None

    def setup(self, **info):
        self.live = _LIVE

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "live" and not k.startswith("_")}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended(trial, "failed")

    def ended(self, trial, how: str) -> None:
        pass


class TellPoolsTrialEnded(_Bound):
    def ended(self, trial, how):
        if self.live.broker:
            try:
                from dfsearch.pool.broker import get_broker

                get_broker(self.live.broker).stop.remote(trial.trial_id)
            except Exception as e:
                _warn(f"could not tell the worker pools that trial {trial.trial_id} ended", e)


class FreePlacementGroups(_Bound):
    def __init__(self):
        self.pgs: dict[str, str] = {}  # running trial -> its worker group's placement group
        self.to_free: dict[str, tuple[str, float]] = {}  # ended trial -> (placement group, when it ended)
        self.freed: list[str] = []  # trials whose placement group we had to remove

    def get_state(self):
        return {"pgs": self.pgs, "to_free": self.to_free, "freed": self.freed}

    def set_state(self, state):
        self.pgs, self.to_free, self.freed = state["pgs"], state["to_free"], state["freed"]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("pg_id"):
            self.pgs[trial.trial_id] = result["pg_id"]

    def ended(self, trial, how):
        if trial.trial_id in self.pgs:  # freed after a grace period, if the Train controller has not done it
            self.to_free[trial.trial_id] = (self.pgs.pop(trial.trial_id), time.time())

    def on_step_begin(self, iteration, trials, **info):
        now = time.time()
        for tid, (_, when) in list(self.to_free.items()):
            if now - when >= FREE_GRACE_S:
                self._free(tid)

    def on_experiment_end(self, trials, **info):
        for tid in list(self.to_free):
            self._free(tid)

    def _free(self, tid: str) -> None:
        pg_id, _ = self.to_free.pop(tid)
        try:
            if free_placement_group(pg_id):
                self.freed.append(tid)
        except Exception as e:
            _warn(f"could not free the placement group of trial {tid}", e)


class KeepBestCheckpoint(_Bound):
    def ended(self, trial, how):
        tid, live = trial.trial_id, self.live
        trial_dir = live.train_storage / tid
        there = live.target.child("train", tid) if live.target else None
        # what a worker on another node wrote; pruned there too unless the fetch failed (this copy may lack some)
        fetched = there is not None and remote.try_pull(there, trial_dir, f"trial {tid}")
        checkpoint_policy.prune(trial_dir)
        if there is not None and trial_dir.is_dir():
            remote.try_push(trial_dir, there, f"trial {tid}", delete=fetched)


class ProgressLog(_Bound):
    def ended(self, trial, how):
        last = trial.last_result or {}
        metric = self.live.space.metric
        try:
            with open(self.live.run_dir / PROGRESS_FILE, "a") as f:
                f.write(json.dumps({"trial_id": trial.trial_id, "arch": trial.config.get("arch"), "how": how,
                                    "epoch": last.get("epoch"), metric: last.get(metric), "time": time.time()}) + "\n")
        except OSError as e:
            _warn("could not write the progress file", e)


def ended_records(run_dir: Path) -> list[dict]:
    """``ProgressLog``'s records: the trials that ended (completed, pruned, failed) in this run or
    an earlier one, in the order they ended."""
    try:
        lines = (run_dir / PROGRESS_FILE).read_text().splitlines()
    except OSError:
        return []
    seen = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        seen.setdefault(record.get("trial_id"), record)  # a trial re-run after a kill counts once
    return list(seen.values())


def ended_trials(run_dir: Path) -> set[str]:
    return {r["trial_id"] for r in ended_records(run_dir)}


class ShowProgress(_Bound):
    """Tells the live view what Tune sees; a line per ended trial says how it ended. A terminal
    that cannot be written to never stops the search (warned once)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safely(self.live.progress.started, trial.trial_id, str(trial.config.get("arch")))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safely(self.live.progress.result, trial.trial_id, str(trial.config.get("arch")),
                     int(result.get("epoch") or 0), result.get(self.live.space.metric))

    def ended(self, trial, how):
        self._safely(self._ended, trial, how)

    def _safely(self, fn, *args) -> None:
        if self.live.progress is None or getattr(self, "_broken", False):
            return
        try:
            fn(*args)
        except Exception as e:
            self._broken = True
            _warn("the progress view stopped", e)

    def _ended(self, trial, how):
        last = trial.last_result or {}
        epoch, max_epochs = last.get("epoch"), self.live.profile.max_epochs
        if how == "finished":
            how = "completed" if epoch is not None and epoch >= max_epochs else "stopped early (ASHA or budget)"
        retries = last.get("retries") or 0
        note = f"lost a worker {retries} time(s), resumed from epoch {last.get('resumed_from')}" if retries else ""
        if how == "failed":
            note = "; ".join(filter(None, [note, f"why: {_error_line(trial)} (search.log has the traceback)"]))
        self.live.progress.trial_ended(trial.trial_id, str(trial.config.get("arch")), how, epoch,
                                       last.get(self.live.space.metric), note)


def _error_line(trial) -> str:
    """The last line of a failed trial's error (Tune keeps it in the trial's error file)."""
    try:
        text = Path(trial.error_file).read_text().strip() if getattr(trial, "error_file", None) else ""
    except OSError:
        text = ""
    return (text.splitlines() or ["see search.log"])[-1][:200]


class WandbTrials(_Bound):
    def on_trial_start(self, iteration, trials, trial, **info):
        self._start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._start(trial)
        run = self.live.wandb_runs.get(trial.trial_id)
        pipelines = {k.removeprefix("transforms_"): v for k, v in result.items() if k.startswith("transforms_")}
        if pipelines:  # the first epoch's result carries what the network saw (train: with augmentation)
            tracking.update_config(run, {"transforms": pipelines})
        tracking.log(run, {k: v for k, v in result.items() if k in WANDB_KEYS}, step=result.get("epoch"))

    def ended(self, trial, how):
        run = self.live.wandb_runs.pop(trial.trial_id, None)
        if run is None:
            return
        best = checkpoint_policy.best(self.live.train_storage / trial.trial_id)
        try:
            run.summary["status"] = how
            if best is not None:
                run.summary["best_checkpoint"] = str(best[0])
        except Exception as e:
            _warn(f"W&B summary of trial {trial.trial_id}", e)
        if best is not None:  # the trial's model: what an ensemble built from this search uses
            path, metrics = best
            tracking.log_artifact(
                run, tracking.model_artifact(self.live.group, trial.trial_id), "model", {"checkpoint": path},
                {"trial_id": trial.trial_id, "arch": trial.config.get("arch"), "status": how, "checkpoint": str(path),
                 **{k: metrics.get(k) for k in ("epoch", "val_acc", "val_auc", "val_loss") if k in metrics}},
                uses=[self.live.dataset_artifact] if self.live.dataset_artifact else [], by_reference=True)
        tracking.finish(run)

    def on_experiment_end(self, trials, **info):
        self.live.close()

    def _start(self, trial):
        live = self.live
        if live.wandb_mode == "disabled" or trial.trial_id in live.wandb_runs:
            return
        cfg = live.space.train_config(trial.config, live.profile, seed=live.seed).model_dump()
        run = tracking.start_run(live.wandb_mode, live.wandb_project, live.group, "trial",
                                 f"{live.group}-{trial.trial_id}", {**cfg, "trial_id": trial.trial_id}, live.run_dir)
        live.wandb_runs[trial.trial_id] = run
        if live.dataset_artifact:
            tracking.use_dataset(run, live.dataset_artifact, live.run_dir / tracking.DATASET_FILE)


class SyncRunFolder(_Bound):
    def setup(self, **info):
        super().setup(**info)
        self._pushed_at = time.time()

    def on_step_begin(self, iteration, trials, **info):
        if self.live.target is not None and time.time() - self._pushed_at >= remote.PUSH_EVERY_S:
            self.push()

    def ended(self, trial, how):
        if self.live.target is not None:
            self.push()

    def push(self) -> None:
        """Copy the driver's own files (Tune state, study, tables, W&B) to the URI."""
        self._pushed_at = time.time()
        remote.try_push(self.live.run_dir, self.live.target, "the search state", delete=True,
                        exclude=("train", "pools"))


def make_callbacks() -> list[Callback]:
    """In the order they run when a trial ends: W&B reads the kept best, the copy comes last."""
    return [TellPoolsTrialEnded(), ProgressLog(), FreePlacementGroups(), KeepBestCheckpoint(), WandbTrials(),
            ShowProgress(), SyncRunFolder()]

