"""One trial's driver: ``fit_trial`` runs one Ray Train ``TorchTrainer`` (the per-worker loop is
``dfsearch.worker.train_loop``), ``run`` is ``dfsearch train``; plus Ray start-up and resource checks
shared with the search."""


from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

SPEED_ENV = {  # measured to cut Ray Train V2's per-run overhead (see BENCHMARKS.md)
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print() reaches the driver twice
}


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point. A thin wrapper so that unpickling it (the controller does) imports
    nothing heavy; see ``dfsearch.worker.train_loop`` for the loop and ``cfg``."""
    from dfsearch.worker import train_loop

    train_loop(cfg)


def pool_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point of a warm pool (``dfsearch.pool``); see ``dfsearch.worker.pool_loop``."""
    from dfsearch.worker import pool_loop

    pool_loop(cfg)


# ----------------------------------------------------------------------------- driver

def init_ray(address: str | None = None, num_cpus: int | None = None,
             include_dashboard: bool | None = None) -> bool:
    """Start (or connect to) Ray once, with the env vars that cut Train's per-run overhead. True
    when this call did (the caller shuts it down: workers' late log lines then cannot reach a
    ``--json`` stdout after the report), False when Ray was already up. A command that takes
    ``--address`` checks it first (``check_address``, before any expensive work)."""
    import ray

    if ray.is_initialized():
        return False
    for k, v in SPEED_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    local = starts_local_ray(address)
    kw = dict(address="local" if local else address, log_to_driver=True, configure_logging=True,
              logging_level="ERROR", runtime_env={"env_vars": {k: os.environ[k] for k in SPEED_ENV}})
    if local and num_cpus is not None:
        kw["num_cpus"] = num_cpus
    if local and include_dashboard is not None:
        kw["include_dashboard"] = include_dashboard
    try:
        ray.init(**kw)
    except ConnectionError as e:  # auto: no cluster here; HOST:PORT: something answers, Ray cannot connect
        from dfsearch.errors import DfsearchError

        hint = START_A_CLUSTER
        if address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("something answers there: a Ray cluster with token authentication, the default of `ray start`, "
                    "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token, or RAY_AUTH_TOKEN) for an explicit "
                    "address; or run on the head node with --address auto")
        raise DfsearchError(f"--address {address}: {str(e).strip().splitlines()[0]} ({hint})") from None
    return True


def starts_local_ray(address: str | None) -> bool:
    """No ``--address`` and no ``RAY_ADDRESS`` (which ``ray job submit`` sets): a fresh local Ray,
    never one that ``ray start`` left running on this machine, or its stale address file, which
    plain ``ray.init()`` would join (and then refuse ``num_cpus``)."""
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


ADDRESS_TIMEOUT_S = 5.0
START_A_CLUSTER = "start one with `ray start --head` or `ray up cluster.yaml`, or leave --address out for a local Ray"


def check_address(address: str | None) -> None:
    """``--address HOST:PORT`` (or ``ray://HOST:PORT``) where nothing answers is an error within
    ``ADDRESS_TIMEOUT_S``: ``ray.init`` would retry for minutes, printing connection warnings."""
    import socket

    from dfsearch.errors import DfsearchError

    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise DfsearchError(f"--address {address}: expected HOST:PORT (the head node's GCS port, 6379 unless "
                            f"changed), ray://HOST:PORT (Ray Client, port 10001) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as e:
        raise DfsearchError(f"--address {address}: no Ray cluster answers there ({type(e).__name__}: {e}); "
                            f"{START_A_CLUSTER}") from None


def check_resources(workers: int, use_gpu: bool, cpus_per_worker: float = 1.0,
                    gpus_per_worker: float = 1.0, extra_cpus: float = 0.0,
                    workers_flag: str = "--workers", gpu_flag: str = "--gpu") -> None:
    """Raise DfsearchError when the cluster can never give what a run asks for (instead of the
    endless wait Ray would otherwise start). The flags named are the calling command's own."""
    import ray

    from dfsearch.errors import DfsearchError

    if workers < 1:
        raise DfsearchError(f"{workers_flag} {workers}: need at least 1")
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu = workers * cpus_per_worker + extra_cpus
    if need_cpu > cpus:
        raise DfsearchError(
            f"{workers_flag} {workers} needs {need_cpu:g} CPUs ({cpus_per_worker:g} per worker"
            f"{f' + {extra_cpus:g} for the trial driver' if extra_cpus else ''}) but this Ray cluster has "
            f"{cpus:g}; use {workers_flag} <= {int((cpus - extra_cpus) // cpus_per_worker)} or a bigger cluster (--address)")
    if use_gpu and workers * gpus_per_worker > gpus:
        raise DfsearchError(
            f"{workers_flag} {workers} x {gpus_per_worker:g} GPU(s) per worker needs "
            f"{workers * gpus_per_worker:g} GPUs but this Ray cluster has {gpus:g}"
            + (f"; drop {gpu_flag} to train on CPUs" if gpus == 0
               else f"; use {gpu_flag} <= {gpus:g}" if gpus_per_worker > gpus
               else f"; use {workers_flag} <= {int(gpus // gpus_per_worker)}"))


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0):
    from ray.train import ScalingConfig

    res = {"CPU": cpus_per_worker}
    if use_gpu:
        res["GPU"] = gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=res)


def best_checkpoint(result, metric: str = "ckpt_score"):
    """The reported checkpoint with the highest ``ckpt_score`` (ties: the later), or None."""
    cands = [(m.get(metric, -math.inf), i, c) for i, (c, m) in enumerate(result.best_checkpoints or [])]
    cands = [x for x in cands if x[2] is not None]
    return max(cands, key=lambda x: (x[0], x[1]))[2] if cands else None


def _trainer_class():
    """TorchTrainer without Ray Train's detached PlacementGroupCleaner.

    That cleaner asks the dashboard's State API whether the controller is alive. Without a
    dashboard it never works (the leak behind the search hang); with one, under load, a lookup that
    comes back empty reads as "dead" and it removes the placement group of a LIVE run (seen here:
    "A worker health check failed ... placement group was removed"). It also costs one extra
    process per run. dfsearch frees placement groups itself (``search.TrialBookkeeper``); a plain
    ``dfsearch train`` owns its controller, so Ray frees the group when the run or the job ends.
    """
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return Trainer


def fit_trial(train_cfg, index, *, workers: int = 1, use_gpu: bool = False,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0, storage: str, name: str,
              candidate: str | None = None, max_train_batches: int | None = None,
              callbacks: list | None = None, max_failures: int = 0, fault: dict | None = None):
    """Run one TorchTrainer trial; returns the ray.train.Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    trainer = _trainer_class()(
        train_loop_per_worker,
        train_loop_config={"train": train_cfg.model_dump(), "index": index,
                           "candidate": candidate or name, "max_train_batches": max_train_batches,
                           "fault": fault},
        scaling_config=scaling_config(workers, use_gpu, cpus_per_worker, gpus_per_worker),
        run_config=RunConfig(
            name=name, storage_path=str(storage), callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="ckpt_score",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()


def trial_summary(result, train_cfg, candidate: str, trial_id: str = "") -> dict:
    """Plain summary of a finished trial: last and best metrics, best checkpoint path."""
    from dfsearch import checkpoint as ckpt_io

    best = best_checkpoint(result)
    metrics = dict(result.metrics or {})
    best_metrics = {}
    if best is not None:
        meta = json.loads((Path(best.path) / ckpt_io.META).read_text())
        best_metrics = meta["metrics"]
    return {"candidate": candidate, "trial_id": trial_id, "arch": train_cfg.arch,
            "config": train_cfg.model_dump(), "last": metrics, "best": best_metrics,
            "checkpoint": best.path if best is not None else None,
            "error": repr(result.error) if result.error else None}


def write_store(summaries: list[dict], folder, relative_to: Path | None = None) -> None:
    """Collect each trial's best-checkpoint predictions into the store contract in ``folder``.
    With ``relative_to`` (a search's run folder), checkpoints are recorded relative to it, so the
    run folder can be moved or copied (e.g. from S3) and still feeds the ensemble."""
    import pandas as pd

    from dfsearch import store

    frames, rows = [], []
    for s in summaries:
        if not s.get("checkpoint"):
            continue
        p = Path(s["checkpoint"]) / store.PREDICTIONS_FILE
        if not p.exists():
            continue
        frame = pd.read_parquet(p)
        frame["candidate"] = s["candidate"]  # the store's name for it, whatever the trial called itself
        frames.append(frame)
        ckpt = Path(s["checkpoint"])
        rows.append(store.candidate_row(s["candidate"], s["trial_id"], s["arch"], s["config"], s["best"],
                                        ckpt.relative_to(relative_to).as_posix() if relative_to else ckpt))
    if frames:
        store.write_predictions(pd.concat(frames, ignore_index=True), folder)
        store.write_candidates(rows, folder)


def run(args) -> int:
    """``dfsearch train``: one trial, then a summary."""
    from dfsearch import models, store
    from dfsearch.config import TrainConfig
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import default_dataset
    from dfsearch.errors import DfsearchError

    from dfsearch.remote import is_uri

    if is_uri(args.out):  # not taken for a local folder "s3:/..."
        raise DfsearchError(f"--out {args.out}: `dfsearch train` writes a local folder; storage URIs are for "
                            f"`run_search.py --out` (or copy the folder afterwards)")
    check_address(args.address)  # before the default dataset is generated
    pretrained = args.pretrained
    if pretrained in (None, "none"):
        pretrained = False
    elif pretrained == "timm":
        pretrained = True
    try:
        cfg = TrainConfig(arch=args.arch, pretrained=pretrained, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          unfrozen=args.unfrozen, img_size=args.img_size, seed=args.seed,
                          oversample=args.oversample, num_classes=args.num_classes,
                          loader_workers=args.loader_workers)
    except Exception as e:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            raise DfsearchError("invalid training option: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
        raise
    if pretrained is not False:  # missing weights fail now, not in a worker after Ray started
        models.create(cfg.arch, pretrained=pretrained, num_classes=cfg.num_classes, img_size=cfg.img_size)
    data = args.data or default_dataset(progress=not args.json)
    index = discover(data)
    for note in index.notes:
        print(f"dfsearch: {note}", file=sys.stderr)
    out = Path(args.out).resolve()
    name = args.name or f"train-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        started = init_ray(args.address)  # with --json the workers' output (Ray prints it on stdout) goes to stderr
        check_resources(args.workers, args.gpu, gpus_per_worker=1.0)
        t0 = time.time()
        result = fit_trial(cfg, index.to_json(), workers=args.workers, use_gpu=args.gpu,
                           storage=str(out), name=name, candidate=name, max_failures=args.max_failures)
        if started:
            import ray

            ray.shutdown()
    summary = trial_summary(result, cfg, name, trial_id=name)
    summary["wall_time_s"] = time.time() - t0
    write_store([summary], out)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.json:
        print(json.dumps(summary, default=str), file=real_stdout)
    else:
        b = summary["best"]
        print(f"\n{name}: {cfg.arch}, {args.workers} worker(s), {summary['wall_time_s']:.0f}s")
        if summary["error"]:
            print(f"  FAILED: {summary['error']}")
        if b:
            print(f"  best epoch {b.get('best_epoch')}: val_acc {b['val_acc']:.3f}  val_auc {b['val_auc']:.3f}  "
                  f"val_loss {b['val_loss']:.4f}  test_acc {b.get('test_acc', float('nan')):.3f}")
            print(f"  trainable params {b['trainable_params']:,}; skipped files {b['skipped_files']}")
            print(f"  checkpoint  {summary['checkpoint']}")
            print(f"  predictions {out / store.PREDICTIONS_FILE} (candidates: {out / store.CANDIDATES_FILE})")
    return 1 if summary["error"] else 0
