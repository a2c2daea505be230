"""The search driver: read it top to bottom in ``run``.

1. Everything cheap that can be wrong, before Ray starts: the run folder (``run_folder``), the
   spec (``spec``: saved as ``search.json``, read back by ``--resume``), the space, the data.
2. Ray, and a plan of what the cluster can give (``plan``; what can never run is refused).
3. ``Tuner.fit()`` (or ``Tuner.restore`` for ``--resume``): Optuna proposes (``searcher``), ASHA
   stops (``schedulers``), every trial streams its epochs from a backend (``trainable``,
   ``backends``: warm pools or one ``TorchTrainer`` per trial), the callbacks keep the books
   (``callbacks``). Ctrl-C / SIGTERM stop it cleanly (``signals``).
4. ``finish``: the trials table, the prediction store, plots, the W&B search run, the copy to a
   URI ``--out``, and the summary (``results``).

What a search leaves in its run folder ``<out>/<name>/``: ``trials.parquet`` (one row per
trial), ``predictions.parquet`` + ``candidates.parquet`` (the prediction store, the ensembler's
input), ``train/<trial_id>/checkpoint_*`` (each trial's best checkpoint), ``optuna.db`` (the
study), ``search.json``, Tune's state (``tuner.pkl``, ...), plots, ``wandb/`` (offline runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time

from dfsearch import commands, remote
from dfsearch.data.images import sample_sizes
from dfsearch.errors import DfsearchError
from dfsearch.search.plan import DRIVER_RESOURCE, local_cpus, make_plan
from dfsearch.search.console import Console, say
from dfsearch.search.run_folder import open_run_folder
from dfsearch.search.signals import StopOnSignal
from dfsearch.search.spec import Options, SearchSpec


def run(args, report_to=None) -> int:
    """``python run_search.py``: the whole search, then a summary (the ``--json`` report goes to
    ``report_to``, default stdout)."""
    from dfsearch import search_space, tracking
    from dfsearch.cluster import check_address

    options = Options.from_args(args)
    check_address(options.address)
    name = args.name or ("search-" + time.strftime("%Y%m%d-%H%M%S"))
    folder = open_run_folder(options.out, name, args.resume)
    spec = SearchSpec.load(folder.run_dir) if args.resume else SearchSpec.from_args(args, name)
    data, index = _discover(spec.data) if spec.data else (None, None)  # a bad --data: before torch (the space)
    space = search_space.load(spec.space)
    data, index = (data, index) if index else _discover(None)  # the default dataset once the space is valid
    space.check_weights()  # published weights that cannot be had: now, not in the first trial's traceback
    mode = tracking.resolve_mode(options.wandb_mode, folder.run_dir)

    started = _start_ray(space, spec, options)
    plan = _plan(spec, options, space, folder)
    # the input policies against the images' sizes, once the profile (cpu / gpu) is known
    space.check_views(plan.profile_name, sample_sizes(index.root, [sid for sid, _ in index.splits["train"]]))
    spec = spec.model_copy(update=dict(profile=plan.profile_name, data=data,
                                       **{k: getattr(plan.profile, k) for k in
                                          ("num_samples", "max_epochs", "workers_per_trial", "grace_period")}))
    folder.run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        spec.save(folder.run_dir)
    commands.record(folder.run_dir, commands.typed(args, "dfsearch search"))
    with Console(folder.run_dir, options.verbose) as console:
        return _run(args, space, spec, options, folder, plan, index, mode, name, started, console, report_to)


def _run(args, space, spec, options, folder, plan, index, mode, name, started, console, report_to) -> int:
    """The search itself, its terminal quiet (``console``) but for dfsearch's own lines."""
    from dfsearch import tracking
    from dfsearch.search import callbacks as cb

    print(f"dfsearch: space {space.name} ({', '.join(space.archs)}), profile {plan.profile_name}: {plan.describe()}, "
          f"{'warm worker pools' if spec.pool else 'one TorchTrainer per trial'}; run dir {folder.run_dir}"
          + (f", copied to {folder.target.uri}" if folder.target else "")
          + ("" if options.verbose else f"; Ray's, Tune's and the workers' output: {console.path}"), file=sys.stderr)
    live = cb.LiveRun(folder.run_dir, space, plan.profile, spec.seed, mode, options.wandb_project, name,
                      target=folder.target, dataset_artifact=tracking.write_dataset_manifest(index, folder.run_dir))
    live.progress = console.start_progress(
        planned=plan.profile.num_samples, max_epochs=plan.profile.max_epochs, metric=space.metric, mode=space.mode,
        budget_epochs=spec.budget_epochs, ended=cb.ended_records(folder.run_dir) if args.resume else None)
    t0 = time.time()
    try:
        with _pools(spec, plan, index, folder, name) as live.broker:
            tuner = _tuner(spec, plan, space, folder, index, live, args.resume, options.max_failures)
            with cb.bound(live), StopOnSignal() as stop:
                grid = tuner.fit()
    finally:
        live.close()
        live.progress.close()
    wall = time.time() - t0
    if started:  # before the report: nothing from the workers comes after it
        import ray

        ray.shutdown()
    return finish(grid, space, plan.profile, spec, options, folder, mode, wall, report_to, stop)


def _discover(data: str | None):
    """(the data folder, its DatasetIndex); no ``--data``: the embedded benchmark with every
    generator family (generated once)."""
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import FAMILIES, default_dataset

    data = data or str(default_dataset(families=FAMILIES, progress=True))
    index = discover(data)
    for note in index.notes:
        print(f"dfsearch: {note}", file=sys.stderr)
    return data, index


def _start_ray(space, spec, options) -> bool:
    from dfsearch.cluster import init_ray, starts_local_ray

    n = None
    if starts_local_ray(options.address):
        n, note = local_cpus(space, spec, options)
        if note:
            print(f"dfsearch: {note}", file=sys.stderr)
    return init_ray(options.address, num_cpus=n, include_dashboard=options.dashboard)


def _plan(spec, options, space, folder):
    import ray

    from dfsearch.cluster import alive_nodes

    plan = make_plan(spec, options, space, ray.cluster_resources())
    nodes = alive_nodes()
    if nodes > 1 and folder.target is None:
        print(f"dfsearch: {nodes} nodes: {folder.out} must be a filesystem shared by all of them at the same "
              f"path (workers write checkpoints there), or use a URI --out (e.g. s3://...)", file=sys.stderr)
    if nodes > 1 and "CPU" in plan.driver and plan.driver["CPU"] > 0:
        print(f"dfsearch: {nodes} nodes and no node advertises the resource {DRIVER_RESOURCE}: the trials' Tune "
              f"trainables may land on any node, and a trial whose node is lost fails with it; give the head "
              f"`--resources '{{\"{DRIVER_RESOURCE}\": 1000}}'` (cluster.yaml does)", file=sys.stderr)
    if nodes > 1 and folder.target is not None and not spec.pool:
        raise DfsearchError(f"--no-pool with --out {options.out} on {nodes} nodes: Ray Train would leave each "
                            f"trial's checkpoints on the node that trained it; drop --no-pool (warm pools copy "
                            f"every trial's checkpoints to the URI from whichever node trains it)")
    return plan


@contextlib.contextmanager
def _pools(spec, plan, index, folder, name):
    """One warm Ray Train worker group per concurrent trial (``dfsearch.pool``); yields the broker's
    name, or None with ``--no-pool``."""
    if not spec.pool:
        yield None
        return
    from dfsearch.pool.pools import Pools

    pools = Pools(plan.max_concurrent, index=index.to_json(), workers=plan.profile.workers_per_trial,
                  use_gpu=plan.use_gpu, cpus_per_worker=plan.cpus_per_worker,
                  gpus_per_worker=plan.gpus_per_worker or 1.0, storage=str(folder.run_dir / "pools"),
                  name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        yield pools.broker_name
    finally:
        pools.close()


def _tuner(spec, plan, space, folder, index, live, resume: bool, max_failures: int):
    from ray import tune

    from dfsearch.search import callbacks as cb
    from dfsearch.search.schedulers import EpochBudget, make_scheduler
    from dfsearch.search.searcher import make_searcher
    from dfsearch.search.trainable import TrialSetup, make_trainable

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # small state: save it often, lose little on a kill
    setup = TrialSetup(space, plan.profile, spec.seed, plan.use_gpu, plan.cpus_per_worker, plan.gpus_per_worker,
                       str(live.train_storage), remote=folder.target.uri if folder.target else None,
                       broker=live.broker, max_failures=max_failures)
    trainable = make_trainable(setup, index.to_json(), plan.driver)
    if resume:  # Tune restores its callbacks, searcher and scheduler with their state
        print(f"dfsearch: resuming {folder.name} from {folder.run_dir}", file=sys.stderr)
        return tune.Tuner.restore(str(folder.run_dir), trainable=trainable, resume_unfinished=True,
                                  restart_errored=False)
    profile = plan.profile
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, folder.run_dir, folder.name, profile.max_epochs, spec.seed, spec.searcher),
            scheduler=make_scheduler(space, profile, spec.scheduler),  # each with its own metric
            num_samples=profile.num_samples, max_concurrent_trials=plan.max_concurrent,
            reuse_actors=spec.pool),
        run_config=tune.RunConfig(name=folder.name, storage_path=str(folder.out), callbacks=cb.make_callbacks(),
                                  stop=EpochBudget(spec.budget_epochs) if spec.budget_epochs else None,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False), verbose=1),
    )


def finish(grid, space, profile, spec, options, folder, mode: str, wall: float, report_to=None,
           stop: StopOnSignal | None = None) -> int:
    """Write trials.parquet, the store, plots and the W&B search run; copy the run to a URI
    ``--out``; print the summary. After a signal (``stop.received``) the tables hold what ended so
    far, trials that had not are ``interrupted`` (their checkpoints kept for ``--resume``), and the
    exit status is 128 + the signal's number."""
    from dfsearch import store, tracking
    from dfsearch.search import callbacks as cb
    from dfsearch.search import results
    from dfsearch.search.plots import optuna_plots

    run_dir, target = folder.run_dir, folder.target
    interrupted = stop.received if stop else None
    fetched = target is not None and remote.try_pull(target.child("train"), run_dir / "train",
                                                     "the trials' checkpoints")  # what other nodes wrote
    df, summaries = results.collect(grid, space, profile, spec.seed, run_dir / "train",
                                    ended=cb.ended_trials(run_dir) if interrupted else None)
    results.prune_unfinished(run_dir / "train", df)
    df.to_parquet(run_dir / results.TRIALS_FILE, index=False)
    store.write_store(summaries, run_dir, relative_to=run_dir)
    run = tracking.start_run(mode, options.wandb_project, folder.name, "search", f"{folder.name}-search",
                             {"space": space.name, "metric": space.metric, **profile.model_dump()}, run_dir)
    tracking.log_table(run, "trials", df)
    tracking.log_dataset(run, run_dir)
    tracking.log_images(run, optuna_plots(run_dir, folder.name))
    tracking.finish(run)
    report = results.summary(df, space, run_dir, wall)
    if mode == "offline":
        report.update(wandb_sync=f"wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*")
    if interrupted:
        report.update(interrupted=interrupted, next=folder.resume_command())
    if target is not None:
        # pruned checkpoints are deleted there too, unless the fetch failed (this copy may lack some)
        ok = remote.try_push(run_dir / "train", target.child("train"), "the trials' checkpoints", delete=fetched) \
            and remote.try_push(run_dir, target, "the run folder", delete=True, exclude=("train", "pools"))
        report.update(uri=target.uri, copied=ok)
        if not interrupted:
            report.update(next=f"python ensemble.py --run {shlex.quote(target.uri)} --top-k 4")
    if options.json:
        print(json.dumps(report, default=str), file=report_to or sys.stdout, flush=True)
    else:
        say(results.format_summary(report))
    if target is not None and not report["copied"]:
        print(f"dfsearch: the run is complete in {run_dir} but could not be copied to {target.uri}; "
              f"`{folder.resume_command()}` copies it again", file=sys.stderr)
        return 1
    if interrupted:
        return stop.exit_status()
    return 0 if report["finished"] > 0 else 1
