"""The per-worker training loop of one trial (runs inside each Ray Train worker).

Build the model (``models.create``), freeze to the top ``unfrozen`` groups, wrap in DDP
(``ray.train.torch.prepare_model``: gloo on CPU, nccl on GPU), shard the data, optimise with timm's
``create_optimizer_v2`` (weight decay = L2 strength) and a cosine schedule with warmup
(``create_scheduler_v2``), AMP on GPU. Every epoch it reports ``epoch, train_loss, train_acc,
val_loss, val_acc, val_auc`` and a checkpoint; the checkpoint of a best epoch also carries the
per-sample val and test probabilities (``predictions.parquet``, the store contract).

The loop talks to whoever runs it through a small session object: ``RayTrainSession`` (one
``TorchTrainer`` per run: resume from ``ray.train.get_checkpoint()``, report with
``ray.train.report``) or ``PoolSession`` (a warm worker pool runs trial after trial, see
``dfsearch.pool``; ``pool_loop`` is that pool's per-worker entry point).

This module imports torch/timm; ``dfsearch.train`` (the driver side) does not import it at module
level, so Ray Train's controller actor does not pay for those imports.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from dfsearch import checkpoint as ckpt_io
from dfsearch import metrics as M
from dfsearch import models, remote, store, trial_files
from dfsearch.config import TrainConfig, score
from dfsearch.data.loading import Augment, ImageList, build_transform, make_loader

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_gather(obj):
    dist = _dist()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist = _dist()
    if dist is not None:
        dist.all_reduce(t)
    return t.tolist()


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_split(model, dataset, *, batch_size, rank, world, device, amp, workers=0) -> tuple[np.ndarray, list]:
    """P(fake) for every item of ``dataset`` (NaN where unreadable), gathered across ranks,
    plus the list of (item index, reason) that could not be read."""
    model.eval()
    loader = make_loader(dataset, batch_size=batch_size, rank=rank, world=world, shuffle=False, seed=0,
                         workers=workers, pad=False)
    idx_all, p_all, bad = [], [], []
    for x, _, idx, b in loader:
        bad.extend(b)
        if x is None:
            continue
        with _autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        p_all.append(models.prob_fake(logits).cpu().numpy())
        idx_all.append(idx.numpy())
    mine = (np.concatenate(idx_all) if idx_all else np.zeros(0, int),
            np.concatenate(p_all) if p_all else np.zeros(0, np.float32), bad)
    probs = np.full(len(dataset), np.nan, dtype=np.float32)
    bad_all = []
    for idx, p, b in _all_gather(mine):
        probs[idx] = p
        bad_all.extend(b)
    return probs, bad_all


def make_optimizer(model, c: TrainConfig, steps_per_epoch: int):
    """timm's optimizer (weight decay = L2 strength) and a per-step cosine schedule with warmup, as
    every trial trains (``bench/bench_train.py``'s plain loop uses the same)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(model, opt=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=c.epochs,
                                       warmup_epochs=c.warmup_epochs, warmup_lr=c.lr * 0.01,
                                       min_lr=c.lr * 0.01, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def _split_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    ok = np.isfinite(probs)
    y, p = labels[ok], probs[ok]
    return {"loss": M.log_loss(y, p), "acc": M.accuracy(y, p), "auc": M.roc_auc(y, p)}


def _resolve_index(index):
    from dfsearch.data.discover import DatasetIndex

    if not isinstance(index, (dict, DatasetIndex)):  # an ObjectRef put by the driver
        import ray

        index = ray.get(index)
    return index if isinstance(index, DatasetIndex) else DatasetIndex.from_json(index)


class RayTrainSession:
    """One ``TorchTrainer`` per run: resume from ``ray.train.get_checkpoint()``, report (and hand
    checkpoints to Ray's checkpoint manager) with ``ray.train.report``. Never asks the loop to stop:
    Ray ends the run itself."""

    def __init__(self):
        import ray.train

        self._ckpt = ray.train.get_checkpoint()
        pg = ray.util.get_current_placement_group()  # reported so a search can free it if this run is killed
        self.pg_id = pg.id.hex() if pg is not None else ""

    @contextlib.contextmanager
    def resume(self):
        if self._ckpt is None:
            yield None
        else:
            with self._ckpt.as_directory() as d:
                yield d

    @contextlib.contextmanager
    def checkpoint_dir(self, epoch: int):
        with tempfile.TemporaryDirectory() as d:
            yield d

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> bool:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir else None)
        return True


def train_loop(cfg: dict, session=None) -> None:
    """One trial on this worker. ``cfg``: ``{"train": TrainConfig dict, "index": DatasetIndex (json
    dict or ObjectRef), "candidate": str, "max_train_batches": int | None, "fault": dict | None}``;
    ``session``: ``RayTrainSession`` (the default) or ``PoolSession``. Returns when the trial has run
    all its epochs, its loss went NaN, or the session said stop."""
    import ray.train
    import ray.train.torch

    from dfsearch.data.discover import oversample

    session = session or RayTrainSession()
    c = TrainConfig(**cfg["train"])
    index = _resolve_index(cfg["index"])
    candidate = cfg.get("candidate", "trial")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = c.amp and device.type == "cuda"
    seed_everything(c.seed)  # identical init on every rank

    model = models.create(c.arch, pretrained=c.pretrained, num_classes=c.num_classes, img_size=c.img_size)
    freeze_info = models.freeze_to_top(model, c.unfrozen)
    dc = models.data_config(c.arch, c.img_size)
    aug = Augment(**c.aug.model_dump())
    train_items = index.splits["train"]
    if c.oversample:
        train_items = oversample(train_items, c.seed)
    train_ds = ImageList(index.root, train_items, build_transform(c.img_size, dc["mean"], dc["std"], aug))
    eval_tf = build_transform(c.img_size, dc["mean"], dc["std"], None)
    val_ds = ImageList(index.root, index.splits["valid"], eval_tf)
    test_ds = ImageList(index.root, index.splits["test"], eval_tf)
    y_val = np.array([lab for _, lab in val_ds.items], dtype=np.int8)
    y_test = np.array([lab for _, lab in test_ds.items], dtype=np.int8)
    loader = make_loader(train_ds, batch_size=c.batch_size, rank=rank, world=world, shuffle=True,
                         seed=c.seed, workers=c.loader_workers, pin_memory=device.type == "cuda")
    max_batches = cfg.get("max_train_batches") or len(loader)
    steps_per_epoch = min(len(loader), max_batches)

    optimizer, scheduler = make_optimizer(model, c, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())

    start_epoch, best, best_epoch, skipped, finished = 0, -math.inf, None, {}, None
    with session.resume() as d:
        if d is not None:
            model.load_state_dict(ckpt_io.load_weights(d), strict=True)
            st = ckpt_io.load_train_state(d)
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            start_epoch, best = st["epoch"] + 1, st["best"]
            best_epoch = st.get("best_epoch")
            skipped = json.loads(st.get("skipped", "{}"))
            if start_epoch >= c.epochs:
                finished = json.loads((Path(d) / ckpt_io.META).read_text())["metrics"]
    model = ray.train.torch.prepare_model(model)
    if finished is not None:
        # the run had finished before its driver was killed: say so again, train nothing
        session.report(finished)
        return

    config_doc = {"train": c.model_dump(), "data": dc, "freeze": freeze_info, "candidate": candidate,
                  "data_root": index.root}
    nan_fault = (cfg.get("fault") or {}).get("kind") == "nan"
    _maybe_fail(cfg.get("fault"), start_epoch)  # after_epoch 0: a trial whose training raises at once
    for epoch in range(start_epoch, c.epochs):
        seed_everything(c.seed * 1000 + rank * 100 + epoch)  # augmentation RNG, resumable
        loader.sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        last = None
        for step, (x, y, idx, bad) in enumerate(itertools.islice(loader, max_batches)):
            for i, reason in bad:
                skipped[train_items[i][0]] = reason
            if x is None:  # a whole batch unreadable: repeat the last one so DDP ranks stay in step
                if last is None:
                    continue
                x, y = last
            last = (x, y)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            loss = models.loss_fn(logits, y)
            if nan_fault:
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            with torch.no_grad():
                loss_sum += float(loss) * len(y)
                correct += float(((models.prob_fake(logits) >= 0.5).long() == y).sum())
                seen += len(y)
        train_time = time.perf_counter() - t0
        loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], device)
        train_loss = loss_sum / max(seen, 1)

        p_val, bad_val = predict_split(model, val_ds, batch_size=c.batch_size, rank=rank, world=world,
                                       device=device, amp=amp, workers=c.loader_workers)
        for i, reason in bad_val:
            skipped[val_ds.items[i][0]] = reason
        v = _split_metrics(y_val, p_val)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct / max(seen, 1),
                   "val_loss": v["loss"], "val_acc": v["acc"], "val_auc": v["auc"],
                   "train_time_s": train_time, "epoch_time_s": time.perf_counter() - t0,
                   "trainable_params": freeze_info["trainable_params"], "nan_loss": False, "pg_id": session.pg_id,
                   "worker_pid": os.getpid()}
        for part in _all_gather(skipped):
            skipped.update(part)
        metrics["skipped_files"] = len(skipped)
        if not math.isfinite(train_loss) or not math.isfinite(v["loss"]):
            metrics.update(nan_loss=True, val_loss=float("nan"), val_acc=0.0, val_auc=0.0)
            metrics["ckpt_score"] = -math.inf
            session.report(metrics)
            if rank == 0:
                print(f"[{candidate}] epoch {epoch + 1}: loss is not finite; stopping this trial", flush=True)
            return
        metrics["ckpt_score"] = score(metrics, c.metric)
        is_best = metrics["ckpt_score"] >= best  # ties: the later epoch, as Ray's checkpoint manager keeps
        preds = None
        if is_best:
            best, best_epoch = metrics["ckpt_score"], epoch + 1
            p_test, bad_test = predict_split(model, test_ds, batch_size=c.batch_size, rank=rank,
                                             world=world, device=device, amp=amp, workers=c.loader_workers)
            for i, reason in bad_test:
                skipped[test_ds.items[i][0]] = reason
            metrics["skipped_files"] = len(skipped)
            t = _split_metrics(y_test, p_test)
            metrics.update(test_loss=t["loss"], test_acc=t["acc"], test_auc=t["auc"])
            preds = (p_val, p_test)
        metrics["best_epoch"] = best_epoch
        if rank == 0:
            print(f"[{candidate}] epoch {epoch + 1}/{c.epochs} train_loss {train_loss:.4f} "
                  f"train_acc {metrics['train_acc']:.3f} val_loss {v['loss']:.4f} val_acc {v['acc']:.3f} "
                  f"val_auc {v['auc']:.3f}{'  *best' if is_best else ''} ({train_time:.1f}s)", flush=True)
            with session.checkpoint_dir(epoch + 1) as d:
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch, "best": best, "best_epoch": best_epoch,
                         "skipped": json.dumps(skipped)}
                meta = {"metrics": metrics, "skipped": [{"path": k, "reason": r} for k, r in sorted(skipped.items())]}
                ckpt_io.save(d, model, config_doc, meta, state)
                if preds is not None:
                    frame = _predictions(candidate, val_ds, y_val, preds[0], test_ds, y_test, preds[1])
                    store.write_predictions(frame, d)
                go = session.report(metrics, d)
        else:
            go = session.report(metrics)
        _maybe_fail(cfg.get("fault"), epoch + 1)
        if not go:
            return


# ----------------------------------------------------------------------------- warm pools

IDLE_POLL_S = 30.0      # an idle pool's rank 0 asks for work this often (and keeps the other ranks in step)
DECISION_TIMEOUT_S = 900.0  # no word from the trial's Tune trainable for this long: stop the trial


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class PoolSession:
    """One trial on a warm pool (``dfsearch.pool``). Resumes from the checkpoint its request names;
    rank 0 writes checkpoints straight into the trial's folder (``checkpoint_eNNNN``, renamed into
    place when complete; the best and the latest are kept), sends each epoch's metrics to the
    trial's Tune trainable through the broker, and waits for its word: continue, or stop (ASHA
    stopped the trial). Rank 0 broadcasts the word, so every rank stops at the same epoch."""

    pg_id = ""  # the pool's placement group outlives this trial: nobody may free it

    def __init__(self, broker, trial_id: str, trial_dir: str, resume_from: str | None, rank: int,
                 trial_uri: str | None = None):
        self.broker, self.trial_id, self.rank = broker, trial_id, rank
        self.trial_dir, self._resume = Path(trial_dir), resume_from
        self.last: dict | None = None  # the last result sent (rank 0)
        self.cut = False  # the search ended while this trial ran (rank 0): it did not end, --resume continues it
        self.target = None  # a URI --out: the trial's folder there (rank 0 copies each checkpoint to it)
        self.fetched = False  # this copy holds all that is there: pruning may delete there too
        if trial_uri:
            self.target = remote.open_uri(trial_uri)
            self.fetched = remote.try_pull(self.target, self.trial_dir, f"trial {trial_id}")  # trained elsewhere?

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
        import ray

        go = True
        if self.rank == 0:
            metrics = dict(metrics)
            if checkpoint_dir:
                final = self.trial_dir / f"checkpoint_e{int(metrics['epoch']):04d}"
                shutil.rmtree(final, ignore_errors=True)
                os.replace(checkpoint_dir, final)
                metrics["checkpoint_path"] = str(final)
                trial_files.prune(self.trial_dir, keep_latest=True)
                self.push()
            self.last = metrics
            ray.get(self.broker.post.remote(self.trial_id, {"type": "result", "metrics": metrics}))
            word = ray.get(self.broker.wait_decision.remote(self.trial_id, metrics["epoch"], DECISION_TIMEOUT_S))
            self.cut, go = word == "shutdown", word == "continue"
        return _broadcast(go)


def pool_loop(cfg: dict) -> None:
    """Per-worker entry point of a warm pool: take a trial from the broker, run ``train_loop`` on it,
    take the next, until the broker says the search is over. ``cfg``: ``{"broker": actor handle,
    "pool_id": int, "index": DatasetIndex json or ObjectRef, "fault": tests only}``; each request
    holds ``train_loop``'s trial fields plus ``trial_dir`` and ``resume`` (a checkpoint folder or
    None).

    A trial that raises is reported to the broker (so its Tune trial fails with that error) and the
    error is re-raised: that ends this Train run (another rank may be stuck in a collective the
    failed one never joined) and the pool starts a fresh one (``dfsearch.pool._run_pool``)."""
    import ray
    import ray.train

    broker = cfg["broker"]
    rank = ray.train.get_context().get_world_rank()
    fault = cfg.get("fault") or {}
    if fault.get("kind") == "raise":  # tests: a pool that can never start
        raise RuntimeError("injected pool fault")
    index = _resolve_index(cfg["index"])
    while True:
        job = ray.get(broker.take.remote(cfg["pool_id"], IDLE_POLL_S)) if rank == 0 else None
        job = _broadcast(job)
        if job is None:
            continue
        if job == "shutdown":
            return
        trial_id, request = job
        if fault.get("kind") == "elsewhere":  # tests: as on another node, whose disk the driver cannot see
            here = Path(fault["root"]) / trial_id
            request = {**request, "trial_dir": str(here),
                       "resume": str(here / Path(request["resume"]).name) if request.get("resume") else None}
        session = PoolSession(broker, trial_id, request["trial_dir"], request.get("resume"), rank,
                              request.get("trial_uri"))
        try:
            train_loop({**request, "index": index}, session)
        except BaseException as e:
            with contextlib.suppress(Exception):
                ray.get(broker.post.remote(trial_id, {"type": "error", "rank": rank,
                                                      "error": f"{type(e).__name__}: {e}",
                                                      "traceback": traceback.format_exc()}))
            raise
        if rank == 0:
            if session.last is not None and not session.cut:  # it ended (not cut short by the search's end)
                trial_files.write_final(session.trial_dir, session.last)
                session.push()  # (a cut trial's checkpoints were copied as they were written)
            ray.get(broker.post.remote(trial_id, {"type": "done"}))
        del session
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _maybe_fail(fault: dict | None, epoch: int) -> None:
    """Fault injection for tests. ``{"after_epoch": N}`` raises after epoch N; with a ``marker``
    file only once (the retried run goes through), so resuming from ``get_checkpoint()`` can be
    exercised. (``{"kind": "nan"}`` is handled in the loop: the loss becomes NaN.)"""
    if not fault or fault.get("kind", "raise") != "raise" or epoch != fault.get("after_epoch", 1):
        return
    marker = fault.get("marker")
    if marker and os.path.exists(marker):
        return
    if marker:
        Path(marker).touch()
    raise RuntimeError(f"injected fault after epoch {epoch}")


def _predictions(candidate, val_ds, y_val, p_val, test_ds, y_test, p_test):
    import pandas as pd

    frames = []
    for split, ds, y, p in (("val", val_ds, y_val, p_val), ("test", test_ds, y_test, p_test)):
        ok = np.isfinite(p)  # unreadable samples have no prediction (and are listed in meta.json)
        ids = [sid for (sid, _), keep in zip(ds.items, ok) if keep]
        frames.append(store.predictions_frame(candidate, split, ids, y[ok], p[ok]))
    return pd.concat(frames, ignore_index=True)


