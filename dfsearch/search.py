"""The search driver: Ray Tune + Optuna (TPE) + ASHA, each trial a Ray Train DDP job.

Flow: validate the space (YAML) and the data, start/connect Ray, refuse what the cluster can never
run, then ``Tuner.fit()`` (or ``Tuner.restore`` for ``--resume``). Each trial is a Tune function
trainable (``trial_fn``) whose training is Ray Train DDP, in one of two ways:

* default: on a warm pool (``dfsearch.pool``): one long-lived ``TorchTrainer`` worker group per
  concurrent trial runs trial after trial; the trainable submits its config and relays each epoch's
  result to Tune. A trial's fixed cost drops from ~17 s (a Train run's start-up) to under 1 s;
* ``--no-pool``: the trainable runs its own ``TorchTrainer`` (``train.fit_trial``) and forwards its
  metrics with ``TuneReportCallback`` (full process isolation per trial).

What a search leaves in its run directory ``<out>/<name>/``:

* ``trials.parquet``: one row per trial: id, arch, hyperparameters, status (completed / pruned /
  failed + reason), epochs run, best val metrics, wall time, checkpoint path;
* ``predictions.parquet`` + ``candidates.parquet``: the prediction store (ensembler input);
* ``train/<trial_id>/checkpoint_*``: the best checkpoint of each trial (the others are deleted);
* ``optuna.db``: the Optuna study (sqlite), so ``--resume`` continues it;
* ``optuna_history.png`` / ``optuna_importances.png``; ``wandb/`` (offline runs, if offline).

With a URI ``--out`` (``s3://...``) the run folder is a local staging copy kept in step with
``<uri>/<name>/`` (``dfsearch.remote``): the driver copies its files, each pool worker its trial's.

Why ``--no-pool`` trials complete here: when ASHA stops a trial, Tune kills the trial's trainable actor, and the
Ray Train controller (owned by it) dies before it removes its worker group's placement group.
Ray's own backup cleaner needs the dashboard's State API, which a ``ray[tune,train]`` install
lacks, so the group stayed reserved and later trials waited forever. ``TrialBookkeeper`` removes a
finished trial's placement group itself (the worker reports its id), so nothing leaks whether or
not the dashboard is there.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pandas as pd
from ray.tune import Callback

from dfsearch import remote, store, tracking, trial_files
from dfsearch.errors import DfsearchError
from dfsearch.search_space import Space, SpaceSampler

DRIVER_CPUS = 0.5  # each trial's Tune trainable (it only waits on its Train workers)
FREE_GRACE_S = 3.0  # how long a finished trial's Train controller gets to remove its placement group
TRIALS_FILE = "trials.parquet"
PROGRESS_FILE = "trials_progress.jsonl"  # one line per finished trial, written as they finish


# ----------------------------------------------------------------------------- searcher

def _honest_optuna_search():
    """OptunaSearch whose feedback tells TPE the truth (built lazily: optuna/ray imports are slow)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class HonestOptunaSearch(OptunaSearch):
        """Stock OptunaSearch tells Optuna that an ASHA-stopped trial is COMPLETE with its truncated
        score, so TPE mistakes "stopped early" for "finished badly (or well)". Here:

        * trial reached ``max_epochs`` -> COMPLETE with its final metric;
        * stopped earlier (ASHA) -> PRUNED (its per-epoch values were reported as intermediate
          values, which TPE uses for pruned trials);
        * raised, or its loss went NaN -> FAIL.
        """

        def __init__(self, *args, max_epochs: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._max_epochs = max_epochs

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            if result and not error and self.metric in result and "training_iteration" in result:
                # Tune does not pass the result that made ASHA stop a trial to on_trial_result:
                # put it in the curve (Optuna ignores a step reported twice)
                try:
                    ot_trial.report(result[self.metric], result["training_iteration"])
                except Exception:
                    pass
            value, state = None, optuna.trial.TrialState.FAIL
            if result and not error and not result.get("nan_loss"):
                if result.get("epoch", 0) >= self._max_epochs:
                    value, state = result.get(self.metric), optuna.trial.TrialState.COMPLETE
                else:
                    state = optuna.trial.TrialState.PRUNED
            try:
                self._ot_study.tell(ot_trial, value, state=state)
            except Exception as e:  # e.g. told twice after a resume: never fatal
                print(f"dfsearch: optuna: {e}", file=sys.stderr)
            self._completed_trials.add(trial_id)

    return HonestOptunaSearch


def make_searcher(space: Space, run_dir: Path, name: str, max_epochs: int, seed: int, kind: str = "tpe"):
    """The Optuna searcher over ``space`` (study persisted in ``run_dir/optuna.db``). ``tpe``:
    multivariate TPE, every architecture tried once first; ``random``: Optuna's RandomSampler (the
    baseline of ``bench/search_efficiency.py``)."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    if kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4,
                                             constant_liar=True)
    searcher = _honest_optuna_search()(space=SpaceSampler(space.archs), metric=space.metric, mode=space.mode,
                                       sampler=sampler, study_name=name, storage=storage,
                                       max_epochs=max_epochs)
    if kind == "tpe":  # every architecture gets one trial first (its other parameters sampled), then TPE
        study = optuna.load_study(study_name=name, storage=storage)
        for arch in space.archs:
            study.enqueue_trial({"arch": arch})
    return searcher


def make_scheduler(space: Space, profile, kind: str = "asha"):
    """ASHA on ``epoch``, comparing ``space.prune_metric`` at its rungs (``fifo``: None, every trial
    runs ``max_epochs``). The metric is the scheduler's own: TPE may optimise another."""
    if kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=space.prune_metric, mode=space.prune_mode,
                         max_t=profile.max_epochs, grace_period=profile.grace_period,
                         reduction_factor=profile.reduction_factor)


def epoch_budget(total: int):
    """A Tune stopper that ends the search once its trials together have run ``total`` epochs."""
    from ray.tune.stopper import Stopper

    class EpochBudget(Stopper):
        def __init__(self):
            self.epochs: dict[str, int] = {}  # trial -> epochs it reported (Tune repeats a trial's last result)

        def __call__(self, trial_id, result):
            self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get("epoch") or 0))
            return False

        def stop_all(self):
            return sum(self.epochs.values()) >= total

    return EpochBudget()


# ----------------------------------------------------------------------------- per trial

class TrialFailed(RuntimeError):
    """A trial's training raised on a warm pool (the message is the worker's error)."""


def trial_fn(config: dict, index=None, setup=None) -> None:
    """Tune function trainable: one Ray Train DDP run for this trial's config, either on a warm
    pool (``setup["broker"]``, the broker's name: submit, then relay each epoch's result to Tune) or as its own
    ``TorchTrainer`` (metrics forwarded by ``TuneReportCallback``)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    space, profile = setup["space"], setup["profile"]
    train_cfg = space.train_config(config, profile, seed=setup["seed"])
    fault = setup.get("faults", {}).get(train_cfg.arch)
    if setup.get("broker"):
        from dfsearch.pool import broker

        trial_dir = Path(setup["train_storage"]) / trial_id
        trial_uri = remote.join(setup["remote"], "train", trial_id) if setup.get("remote") else None
        if trial_uri:  # this trial's folder as whichever node last trained it left it
            remote.try_pull(remote.open_uri(trial_uri), trial_dir, f"trial {trial_id}")
        final = trial_files.read_final(trial_dir)
        if final is not None:  # it had ended before the search was killed: say so again, train nothing
            return tune.report(final)
        resume = trial_files.latest(trial_dir)  # a search killed while this trial ran
        request = {"train": train_cfg.model_dump(), "candidate": trial_id, "fault": fault,
                   "max_train_batches": profile.steps_per_epoch, "trial_dir": str(trial_dir),
                   "resume": str(resume) if resume else None, "trial_uri": trial_uri}
        return _relay(broker(setup["broker"]), trial_id, request)

    from ray.tune.integration.ray_train import TuneReportCallback

    from dfsearch.train import fit_trial

    result = fit_trial(train_cfg, index, workers=profile.workers_per_trial, use_gpu=setup["use_gpu"],
                       cpus_per_worker=setup["cpus_per_worker"], gpus_per_worker=setup["gpus_per_worker"],
                       storage=setup["train_storage"], name=trial_id, candidate=trial_id,
                       max_train_batches=profile.steps_per_epoch, callbacks=[TuneReportCallback()],
                       fault=fault)
    if result.error is not None:
        raise result.error


def _relay(broker, trial_id: str, request: dict) -> None:
    """Run a trial on a warm pool: submit it, then hand each epoch's result to Tune and tell the
    pool to go on once Tune took it (if Tune stops the trial instead, the bookkeeper says stop)."""
    import ray
    from ray import tune

    ray.get(broker.submit.remote(trial_id, request))
    while True:
        for m in ray.get(broker.fetch.remote(trial_id, 10.0)):
            if m["type"] == "result":
                tune.report(m["metrics"])
                broker.decide.remote(trial_id, m["metrics"]["epoch"], "continue")
            elif m["type"] == "done":
                return
            else:
                if m.get("traceback"):
                    print(m["traceback"], file=sys.stderr)
                raise TrialFailed(m["error"])


class TrialBookkeeper(Callback):
    """Tune callback (driver side): frees a finished trial's placement group, keeps only its best
    checkpoint on disk, and mirrors every trial to its own W&B run. Never raises into Tune."""

    def __init__(self, train_storage: str, wandb_mode: str, wandb_project: str, group: str, run_dir: Path,
                 space: Space, profile, seed: int, broker: str | None = None, target=None):
        self.train_storage, self.mode, self.project, self.group = train_storage, wandb_mode, wandb_project, group
        self.run_dir, self.space, self.profile, self.seed = run_dir, space, profile, seed
        self.broker = broker  # warm pools (the broker's name): tell them when Tune ends a trial
        self.pgs: dict[str, str] = {}          # running trial -> its worker group's placement group
        self.to_free: dict[str, tuple[str, float]] = {}  # finished trial -> (placement group, when)
        self.runs: dict = {}
        self.freed: list[str] = []  # trials whose placement group we had to remove
        self.target = target  # a URI --out (dfsearch.remote.Remote): copy the run there as it goes
        self.pushed_at = time.time()

    # Tune hooks ---------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        now = time.time()
        for tid, (pg_id, when) in list(self.to_free.items()):
            if now - when >= FREE_GRACE_S:
                self._free(tid)
        if self.target is not None and now - self.pushed_at >= remote.PUSH_EVERY_S:
            self._push()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._start_wandb(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        if result.get("pg_id"):
            self.pgs[tid] = result["pg_id"]
        if tid not in self.runs:
            self._start_wandb(trial)
        tracking.log(self.runs.get(tid), {k: v for k, v in result.items() if k in WANDB_KEYS},
                     step=result.get("epoch"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial, "failed")

    def on_experiment_end(self, trials, **info):
        for tid in list(self.to_free):
            self._free(tid)
        self.close()

    # helpers ------------------------------------------------------------
    def _start_wandb(self, trial):
        if self.mode == "disabled" or trial.trial_id in self.runs:
            return
        cfg = self.space.train_config(trial.config, self.profile, seed=self.seed).model_dump()
        self.runs[trial.trial_id] = tracking.start_run(self.mode, self.project, self.group, "trial",
                                                       f"{self.group}-{trial.trial_id}",
                                                       {**cfg, "trial_id": trial.trial_id}, self.run_dir)

    def _finished(self, trial, how: str):
        tid = trial.trial_id
        if self.broker:
            try:
                from dfsearch.pool import broker

                broker(self.broker).stop.remote(tid)
            except Exception as e:
                print(f"dfsearch: could not tell the worker pools that trial {tid} ended: {e}", file=sys.stderr)
        last = trial.last_result or {}
        try:
            with open(self.run_dir / PROGRESS_FILE, "a") as f:
                f.write(json.dumps({"trial_id": tid, "how": how, "epoch": last.get("epoch"),
                                    self.space.metric: last.get(self.space.metric), "time": time.time()}) + "\n")
        except OSError:
            pass
        if tid in self.pgs:  # freed after a grace period, if the Train controller has not done it
            self.to_free[tid] = (self.pgs.pop(tid), time.time())
        trial_dir = Path(self.train_storage) / tid
        fetched = self.target is not None and remote.try_pull(self.target.child("train", tid), trial_dir,
                                                              f"trial {tid}")  # what a worker on another node wrote
        best = trial_files.prune(trial_dir)
        run = self.runs.pop(tid, None)
        if run is not None:
            try:
                run.summary["status"] = how
                if best is not None:
                    run.summary["best_checkpoint"] = str(best[0])
            except Exception:
                pass
        tracking.finish(run)
        if self.target is not None:
            if trial_dir.is_dir():  # pruned there too, unless the fetch failed (this copy may lack some)
                remote.try_push(trial_dir, self.target.child("train", tid), f"trial {tid}", delete=fetched)
            self._push()

    def _push(self):
        """Copy the driver's own files (Tune state, study, tables, W&B) to the URI."""
        self.pushed_at = time.time()
        remote.try_push(self.run_dir, self.target, "the search state", delete=True, exclude=("train", "pools"))

    def _free(self, tid: str):
        """Remove a finished trial's Train worker-group placement group if it is still there."""
        pg_id, _ = self.to_free.pop(tid, (None, None))
        if not pg_id:
            return
        try:
            from ray._raylet import PlacementGroupID
            from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

            pg = PlacementGroup(PlacementGroupID.from_hex(pg_id))
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                remove_placement_group(pg)
                self.freed.append(tid)
        except Exception as e:
            print(f"dfsearch: could not free the placement group of trial {tid}: {e}", file=sys.stderr)

    def close(self):
        for tid in list(self.runs):
            tracking.finish(self.runs.pop(tid))


WANDB_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "test_acc", "test_auc",
              "train_time_s", "epoch_time_s", "skipped_files")


# ----------------------------------------------------------------------------- results

def collect(results, space: Space, profile, seed: int, train_storage: Path,
            ended: set[str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Rows for trials.parquet and per-trial summaries for the store, from Tune's ResultGrid
    (status, config, timing) and each trial's best checkpoint on disk (metrics, predictions).
    ``ended``: the search was interrupted and these are the trials that ended; the others are
    ``interrupted`` (kept out of the store, their latest checkpoint kept for ``--resume``)."""
    rows, summaries = [], []
    for r in results:
        last = r.metrics or {}
        tid = last.get("trial_id") or Path(r.path).name
        cfg = space.train_config(r.config, profile, seed=seed)
        hist = r.metrics_dataframe
        epochs = int(last.get("epoch", 0) or 0)
        cut = ended is not None and tid not in ended and r.error is None
        if cut:
            status, reason = "interrupted", f"the search was stopped after {epochs} epoch(s); --resume continues it"
        elif r.error is not None:
            err = getattr(r.error, "cause", None) or r.error  # a RayTaskError wraps what the trial raised
            status, reason = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        elif last.get("nan_loss"):
            status, reason = "failed", "loss became NaN/inf"
        elif epochs >= profile.max_epochs:
            status, reason = "completed", ""
        elif epochs == 0:
            status, reason = "failed", "no epoch finished"
        else:
            status, reason = "pruned", f"stopped early after {epochs} epoch(s) (ASHA, or the epoch budget)"
        found = trial_files.prune(train_storage / tid, keep_latest=cut)
        ckpt, best = (str(found[0]), found[1]) if found else ("", {})
        flat = cfg.model_dump()
        aug = flat.pop("aug")
        nan = float("nan")
        row = {"trial_id": tid, "arch": cfg.arch, **{k: v for k, v in flat.items() if k != "arch"},
               **{f"aug_{k}": v for k, v in aug.items()}, "status": status, "reason": reason, "epochs": epochs,
               "best_epoch": best.get("epoch"), "val_acc": best.get("val_acc", nan),
               "val_auc": best.get("val_auc", nan), "val_loss": best.get("val_loss", nan),
               "test_acc": best.get("test_acc", nan),
               "start": float(hist["timestamp"].iloc[0] - hist["time_this_iter_s"].iloc[0])
               if hist is not None and not hist.empty else nan,
               "wall_time_s": float(last.get("time_total_s", nan)),
               "train_time_s": float(hist["train_time_s"].sum()) if hist is not None and "train_time_s" in hist else nan,
               "checkpoint": ckpt}
        row["unfrozen"] = str(row["unfrozen"])
        row["pretrained"] = str(row["pretrained"])
        row["aug_jpeg_quality"] = json.dumps(list(row["aug_jpeg_quality"]))
        rows.append(row)
        if ckpt and status in ("completed", "pruned"):
            summaries.append({"candidate": tid, "trial_id": tid, "arch": cfg.arch, "config": cfg.model_dump(),
                              "best": best, "checkpoint": ckpt})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("trial_id").reset_index(drop=True)
    return df, summaries


def optuna_plots(run_dir: Path, name: str) -> dict:
    """Optimisation history and parameter importances as PNGs (what can be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = {}
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    except Exception:
        return out
    for key, fn in (("optuna_history", ovm.plot_optimization_history),
                    ("optuna_importances", ovm.plot_param_importances)):
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(run_dir / f"{key}.png", dpi=90)
            matplotlib.pyplot.close(fig)
            out[key] = run_dir / f"{key}.png"
        except Exception:  # too few finished trials for importances, etc.
            pass
    return out


# ----------------------------------------------------------------------------- driver

def plan(args, space: Space, cluster: dict) -> dict:
    """Resolve profile, workers, GPUs and concurrency; raise for what can never run."""
    gpus = cluster.get("GPU", 0)
    use_gpu = args.gpus_per_worker > 0 if args.gpus_per_worker is not None else gpus > 0
    profile = space.profile(args.profile or ("gpu" if use_gpu else "cpu"))
    overrides = {k: v for k, v in dict(num_samples=args.num_samples, max_epochs=args.max_epochs,
                                       workers_per_trial=args.workers_per_trial,
                                       grace_period=args.grace_period).items() if v is not None}
    if overrides:
        profile = profile.model_copy(update=overrides)
    if profile.grace_period > profile.max_epochs:
        profile = profile.model_copy(update={"grace_period": profile.max_epochs})
    gpw = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
    if use_gpu and gpw < 1 and profile.workers_per_trial > 1:
        # Ray would put the ranks of one trial on one GPU, and nccl refuses that at the first
        # collective ("Duplicate GPU detected"): every trial would fail after its start-up
        raise DfsearchError(
            f"--gpus-per-worker {gpw:g} with --workers-per-trial {profile.workers_per_trial}: the DDP ranks of a "
            f"trial would share one GPU, which nccl refuses; use --gpus-per-worker >= 1, or "
            f"--workers-per-trial 1 to pack several trials on a GPU")
    from dfsearch.train import check_resources

    check_resources(profile.workers_per_trial, use_gpu, args.cpus_per_worker, gpw or 1.0, extra_cpus=DRIVER_CPUS,
                    workers_flag="--workers-per-trial", gpu_flag="--gpus-per-worker")
    per_trial_cpu = profile.workers_per_trial * args.cpus_per_worker + DRIVER_CPUS
    fit = int(cluster.get("CPU", 0) // per_trial_cpu)
    if use_gpu:
        fit = min(fit, int(gpus // (profile.workers_per_trial * gpw)))
    concurrent = max(1, min(fit, args.max_concurrent or fit, profile.num_samples))
    return dict(profile=profile, use_gpu=use_gpu, gpus_per_worker=gpw, max_concurrent=concurrent)


class StopOnSignal:
    """While a search runs: the first SIGINT (Ctrl-C) or SIGTERM (``kill``, a batch scheduler's
    pre-emption) stops it the way Tune stops on Ctrl-C -- running trials are stopped, Tune's state is
    saved -- and ``run`` then writes what finished and says how to ``--resume``. A second signal
    aborts at once (the state Tune saved every ``TUNE_GLOBAL_CHECKPOINT_S`` still resumes).
    Tune's own stop signal is SIGUSR1 (its SIGINT handler is turned off so that SIGTERM, which it
    does not catch, takes the same path). ``received``: the signal's name, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.received = None
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, sig, frame):
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if self.received is not None or not tune_listens:  # again, or before Tune started: abort
            signal.signal(sig, self._old[sig])
            os.kill(os.getpid(), sig)
            return
        self.received = signal.Signals(sig).name
        print(f"\ndfsearch: {self.received}: stopping the running trials and saving the search state "
              f"(again to abort at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        return False


def run(args, report_to=None) -> int:
    """``python run_search.py``: the whole search, then a summary (the ``--json`` report goes to
    ``report_to``, default stdout)."""
    from dfsearch import search_space
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import default_dataset
    from dfsearch.train import check_address, init_ray, starts_local_ray

    # 1. everything cheap that can be wrong, before Ray starts
    check_address(args.address)
    name = args.name or ("search-" + time.strftime("%Y%m%d-%H%M%S"))
    target = None  # a URI --out: the run is staged locally and copied there (dfsearch.remote)
    fetched_all = False  # --resume with a URI and no local copy: all of it was just fetched
    if remote.is_uri(args.out):
        target = remote.open_uri(args.out).child(name)
        remote.check_writable(target)
        run_dir = remote.staging_dir(target.uri)
        out = run_dir.parent
        if args.resume:
            if not (run_dir / "tuner.pkl").exists() and target.exists("tuner.pkl"):
                print(f"dfsearch: fetching {target.uri} into {run_dir}", file=sys.stderr)
                remote.fetch(target, run_dir, "--out", exclude=("pools",))
                fetched_all = True
        elif target.exists("tuner.pkl"):
            raise DfsearchError(f"a search named {name!r} already exists at {target.uri}; use --resume to "
                                f"continue it or another --name")
        elif run_dir.exists() and not (run_dir / "tuner.pkl").exists():  # a search that never started
            shutil.rmtree(run_dir)
    else:
        out = Path(args.out).expanduser().resolve()
        run_dir = out / name
    where = target.uri if target else str(out)
    if args.resume:
        if not (run_dir / "tuner.pkl").exists():
            prev = [] if target else sorted(p.parent.name for p in out.glob("*/tuner.pkl"))
            raise DfsearchError(f"--resume: no previous search named {name!r} under {where}"
                                + (f"; found: {', '.join(prev)}" if prev
                                   else " (pass the same --out and --name as the interrupted run)"))
        saved = json.loads((run_dir / "search.json").read_text())
        args.space, args.data = saved["space"], saved["data"]
        for k in ("profile", "num_samples", "max_epochs", "workers_per_trial", "grace_period", "seed"):
            setattr(args, k, saved["args"].get(k))
        for k, default in (("pool", True), ("searcher", "tpe"), ("scheduler", "asha"), ("budget_epochs", None)):
            setattr(args, k, saved["args"].get(k, default))
        if target and not fetched_all:  # trials that other nodes trained since this copy was made
            remote.fetch(target.child("train"), run_dir / "train", "--out")
    elif (run_dir / "tuner.pkl").exists():  # (with a URI: staged here, and its copy there never made it)
        raise DfsearchError(f"a search named {name!r} already exists in {out}; use --resume to continue it "
                            f"{'(and copy it to ' + target.uri + ') ' if target else ''}or another --name")
    space = search_space.load(args.space)
    data = args.data or str(default_dataset(progress=True))
    index = discover(data)
    for note in index.notes:
        print(f"dfsearch: {note}", file=sys.stderr)
    mode = tracking.resolve_mode(args.wandb_mode, run_dir)

    # 2. Ray, and what the cluster can give
    local_cpus = None
    if starts_local_ray(args.address):
        cores = os.cpu_count() or 1
        need = (args.workers_per_trial or max(p.workers_per_trial for p in space.profiles.values())) \
            * args.cpus_per_worker + DRIVER_CPUS
        local_cpus = max(cores, math.ceil(need))
        if local_cpus > cores:
            print(f"dfsearch: local Ray with {local_cpus} logical CPUs on {cores} cores (a trial needs "
                  f"{need:g}: its workers plus a {DRIVER_CPUS}-CPU driver that mostly waits)", file=sys.stderr)
    started = init_ray(args.address, num_cpus=local_cpus, include_dashboard=args.dashboard)
    import ray
    from ray import tune

    p = plan(args, space, ray.cluster_resources())
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and target is None:
        print(f"dfsearch: {nodes} nodes: {out} must be a filesystem shared by all of them at the same "
              f"path (workers write checkpoints there), or use a URI --out (e.g. s3://...)", file=sys.stderr)
    if nodes > 1 and target is not None and not args.pool:
        raise DfsearchError(f"--no-pool with --out {args.out} on {nodes} nodes: Ray Train would leave each trial's "
                            f"checkpoints on the node that trained it; drop --no-pool (warm pools copy every "
                            f"trial's checkpoints to the URI from whichever node trains it)")
    profile = p["profile"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        (run_dir / "search.json").write_text(json.dumps({
            "space": str(space.path), "data": str(data), "name": name,
            "args": {"profile": args.profile or ("gpu" if p["use_gpu"] else "cpu"), "num_samples": profile.num_samples,
                     "max_epochs": profile.max_epochs, "workers_per_trial": profile.workers_per_trial,
                     "grace_period": profile.grace_period,
                     "seed": args.seed, "pool": args.pool, "searcher": args.searcher, "scheduler": args.scheduler,
                     "budget_epochs": args.budget_epochs}}, indent=2))
    print(f"dfsearch: space {space.name} ({', '.join(space.archs)}), profile: {profile.num_samples} trials x "
          f"<= {profile.max_epochs} epochs, {profile.workers_per_trial} workers/trial, "
          f"{p['max_concurrent']} concurrent, {'GPU' if p['use_gpu'] else 'CPU'}, "
          f"{'warm worker pools' if args.pool else 'one TorchTrainer per trial'}; run dir {run_dir}"
          + (f", copied to {target.uri}" if target else ""), file=sys.stderr)

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # small state: save it often, lose little on a kill
    train_storage = str(run_dir / "train")
    setup = {"space": space, "profile": profile, "seed": args.seed, "use_gpu": p["use_gpu"],
             "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": p["gpus_per_worker"] or 1.0,
             "train_storage": train_storage, "remote": target.uri if target else None,
             "faults": getattr(args, "faults", None) or {}}
    pools = None
    if args.pool:  # one warm Ray Train worker group per concurrent trial (dfsearch.pool)
        from dfsearch.pool import Pools

        pools = Pools(p["max_concurrent"], index=index.to_json(), workers=profile.workers_per_trial,
                      use_gpu=p["use_gpu"], cpus_per_worker=args.cpus_per_worker,
                      gpus_per_worker=setup["gpus_per_worker"], storage=str(run_dir / "pools"),
                      name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", fault=setup["faults"].get("pool"))
        setup["broker"] = pools.broker_name
    trainable = tune.with_resources(tune.with_parameters(trial_fn, index=index.to_json(), setup=setup),
                                    {"CPU": DRIVER_CPUS})
    keeper = TrialBookkeeper(train_storage, mode, args.wandb_project, name, run_dir, space, profile, args.seed,
                             broker=pools.broker_name if pools else None, target=target)
    t0 = time.time()
    try:
        if args.resume:
            tuner = tune.Tuner.restore(str(run_dir), trainable=trainable, resume_unfinished=True,
                                       restart_errored=False)
            print(f"dfsearch: resuming {name} from {run_dir}", file=sys.stderr)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(space, run_dir, name, profile.max_epochs, args.seed, args.searcher),
                    scheduler=make_scheduler(space, profile, args.scheduler),  # each with its own metric
                    num_samples=profile.num_samples, max_concurrent_trials=p["max_concurrent"],
                    reuse_actors=pools is not None),
                run_config=tune.RunConfig(name=name, storage_path=str(out), callbacks=[keeper],
                                          stop=epoch_budget(args.budget_epochs) if args.budget_epochs else None,
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                          verbose=1),
            )
        if args.resume:
            tuner._local_tuner._run_config.callbacks = [keeper]  # callbacks are not restored; ours are fresh
        with StopOnSignal() as stop:
            results = tuner.fit()
    finally:
        keeper.close()
        if pools is not None:
            pools.close()
    wall = time.time() - t0
    if started:  # before the report: nothing from the workers comes after it
        ray.shutdown()
    return finish(results, space, profile, args, run_dir, name, mode, wall, report_to, target,
                  interrupted=stop.received)


def finish(results, space, profile, args, run_dir: Path, name: str, mode: str, wall: float,
           report_to=None, target=None, interrupted: str | None = None) -> int:
    """Write trials.parquet, the store, plots and W&B search run; copy the run to ``target`` (a
    URI --out); print the summary. ``interrupted`` (a signal's name): the search was stopped; the
    tables hold what ended so far, trials that had not are marked ``interrupted`` (their checkpoints
    kept for ``--resume``), and the exit status is 128 + the signal's number."""
    from dfsearch.train import write_store

    fetched = target is not None and remote.try_pull(target.child("train"), run_dir / "train",
                                                     "the trials' checkpoints")  # what other nodes wrote
    ended = _ended_trials(run_dir) if interrupted else None
    df, summaries = collect(results, space, profile, args.seed, run_dir / "train", ended=ended)
    df.to_parquet(run_dir / TRIALS_FILE, index=False)
    write_store(summaries, run_dir, relative_to=run_dir)
    plots = optuna_plots(run_dir, name)
    run = tracking.start_run(mode, args.wandb_project, name, "search", f"{name}-search",
                             {"space": space.name, "metric": space.metric, **profile.model_dump()}, run_dir)
    tracking.log_table(run, "trials", df)
    tracking.log_images(run, plots)
    tracking.finish(run)
    report = summary(df, space, run_dir, wall)
    if interrupted:
        report.update(interrupted=interrupted, next=_resume_command(args, name))
    if target is not None:
        # pruned checkpoints are deleted there too, unless the fetch failed (this copy may lack some)
        ok = remote.try_push(run_dir / "train", target.child("train"), "the trials' checkpoints", delete=fetched) \
            and remote.try_push(run_dir, target, "the run folder", delete=True, exclude=("train", "pools"))
        report.update(uri=target.uri, copied=ok)
        if not interrupted:
            report.update(next=f"python ensemble.py --run {shlex.quote(target.uri)} --top-k 4")
    if args.json:
        print(json.dumps(report, default=str), file=report_to or sys.stdout, flush=True)
    else:
        print(format_summary(report))
    if target is not None and not report["copied"]:
        print(f"dfsearch: the run is complete in {run_dir} but could not be copied to {target.uri}; "
              f"`{_resume_command(args, name)}` copies it again", file=sys.stderr)
        return 1
    if interrupted:
        return 128 + signal.Signals[interrupted].value
    return 0 if report["finished"] > 0 else 1


def _resume_command(args, name: str) -> str:
    return f"python run_search.py --resume --out {shlex.quote(str(args.out))} --name {shlex.quote(name)}"


def _ended_trials(run_dir: Path) -> set[str]:
    """Trials that ended (completed, pruned, failed) in this run or an earlier one: the progress file."""
    try:
        lines = (run_dir / PROGRESS_FILE).read_text().splitlines()
    except OSError:
        return set()
    return {json.loads(line)["trial_id"] for line in lines if line.strip()}


def summary(df: pd.DataFrame, space: Space, run_dir: Path, wall: float) -> dict:
    asc = space.mode == "min"
    key = space.metric
    done = df[df.status.isin(["completed", "pruned"])] if not df.empty else df
    top = done.sort_values(key, ascending=asc).head(5) if not done.empty else done
    counts = df.status.value_counts().to_dict() if not df.empty else {}
    best = top.iloc[0].to_dict() if not top.empty else None
    return {"run_dir": str(run_dir), "wall_time_s": wall, "trials": int(len(df)), "status": counts,
            "finished": int(len(done)), "metric": key, "best": best,
            "top": top[["trial_id", "arch", "status", "epochs", "val_acc", "val_auc", "val_loss", "lr"]].to_dict("records")
            if not top.empty else [],
            "failed": df[df.status == "failed"][["trial_id", "arch", "reason"]].to_dict("records") if not df.empty else [],
            "files": {"trials": str(run_dir / TRIALS_FILE), "predictions": str(run_dir / store.PREDICTIONS_FILE),
                      "candidates": str(run_dir / store.CANDIDATES_FILE)},
            "next": f"python ensemble.py --run {run_dir} --top-k 4"}


def format_summary(r: dict) -> str:
    how = f"interrupted ({r['interrupted']}) after" if r.get("interrupted") else "finished in"
    lines = [f"\nsearch {how} {r['wall_time_s'] / 60:.1f} min: {r['trials']} trials "
             f"({', '.join(f'{v} {k}' for k, v in sorted(r['status'].items()))})"]
    if r["top"]:
        lines.append(f"\n  {'trial':<14} {'arch':<22} {'status':<10} {'ep':>3} {'val_acc':>8} {'val_auc':>8} {'val_loss':>9} {'lr':>9}")
        for t in r["top"]:
            lines.append(f"  {t['trial_id']:<14} {t['arch']:<22} {t['status']:<10} {t['epochs']:>3} {t['val_acc']:>8.3f} "
                         f"{t['val_auc']:>8.3f} {t['val_loss']:>9.4f} {t['lr']:>9.2e}")
    for f in r["failed"][:5]:
        lines.append(f"  failed {f['trial_id']} ({f['arch']}): {f['reason']}")
    if r["best"]:
        b = r["best"]
        cfg = {k: b[k] for k in ("arch", "lr", "weight_decay", "unfrozen", "batch_size", "optimizer") if k in b}
        lines.append(f"\n  best: {b['trial_id']} {r['metric']} {b[r['metric']]:.4f}  {json.dumps(cfg, default=str)}")
        lines.append(f"  checkpoint: {b['checkpoint']}")
    if r.get("uri"):
        lines.append(f"\n  copied to:   {r['uri']}" + ("" if r["copied"] else "  (FAILED: see above)"))
    lines.append(f"  local copy:  {r['run_dir']}" if r.get("uri") else f"\n  run dir:     {r['run_dir']}")
    lines.append(f"  trials:      {r['files']['trials']}")
    lines.append(f"  predictions: {r['files']['predictions']}")
    lines.append(f"\n  next: {r['next']}")
    return "\n".join(lines)
