"""The per-worker training loop of one trial (runs inside each Ray Train worker).

Read ``train_loop`` first: build the trial, restore it if a checkpoint says where it was, then
for each epoch train, evaluate, save and report, until the last epoch, a NaN loss, or whoever
runs the loop says stop. The pieces it calls:

* ``build``: the model (``models.create``), frozen to the top ``unfrozen`` groups, the data
  (sharded across DDP ranks; a balanced sampler if ``oversample``), timm's optimizer (weight
  decay = L2 strength) and a per-step cosine schedule with warmup, AMP on GPU;
* ``restore``: weights, optimizer and schedule from a checkpoint folder;
* ``train_one_epoch``: the optimisation steps of one epoch;
* ``evaluate``: P(fake) for every image of a split, gathered across ranks, and its metrics;
* ``save``: a checkpoint folder (``dfsearch.checkpoint``); the best epoch's also carries the
  per-sample val and test probabilities (``predictions.parquet``, the store contract).

The loop talks to whoever runs it through a small session object: ``RayTrainSession`` (one
``TorchTrainer`` per run: resume from ``ray.train.get_checkpoint()``, report with
``ray.train.report``) or ``dfsearch.pool.runner.PoolSession`` (a warm pool runs trial after trial).
A session has ``resume()`` (a context giving the folder to restore from, or None),
``checkpoint_dir(epoch)`` (a context giving a folder to save into), ``report(metrics, folder)``
(returns False when the trial must stop) and ``pg_id`` (its placement group, for a search to free;
"" when nobody may). Which checkpoint is kept is ``dfsearch.checkpoint_policy``'s.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.utils import random_seed

from dfsearch import checkpoint as ckpt_io
from dfsearch import checkpoint_policy, models, store
from dfsearch import metrics as M
from dfsearch.config import TrainConfig
from dfsearch.data import decoded, views
from dfsearch.data.images import sample_sizes
from dfsearch.data.loading import Augment, ImageList, build_transform, make_loader


# ----------------------------------------------------------------------------- DDP helpers

def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_gather(obj) -> list:
    dist = _dist()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if (dist := _dist()) is not None:
        dist.all_reduce(t)
    return t.tolist()


def loader_processes(setting, device: torch.device, cpus: int | None = None, gpus: int | None = None) -> int:
    """DataLoader processes for one worker: ``setting`` (TrainConfig.loader_workers) when a number;
    ``"auto"``: on a GPU the CPUs this process may use per GPU of the node, less one for the training
    process itself, at most 8 (past that, more decode processes only add memory); on CPU 0."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    gpus = gpus if gpus is not None else max(1, torch.cuda.device_count())
    return max(0, min(8, cpus // gpus - 1))


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


# ----------------------------------------------------------------------------- the pieces

TOKEN_FAMILIES = ("vit", "swin", "capsnet")  # not convnets: channels_last gains them nothing

@dataclass
class Split:
    """An evaluation split: its images and labels."""

    dataset: ImageList
    labels: np.ndarray


@dataclass
class Trial:
    """Everything one trial's loop needs on this worker, built once by ``build``."""

    cfg: TrainConfig
    candidate: str
    rank: int
    world: int
    device: torch.device
    amp: bool
    model: torch.nn.Module
    freeze_info: dict
    data_config: dict
    data_root: str
    train_items: list
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    val: Split
    test: Split
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int | None = None
    skipped: dict = field(default_factory=dict)  # image path -> why it could not be read

    def note_skipped(self, items, bad) -> None:
        for i, reason in bad:
            self.skipped[items[i][0]] = reason


def make_optimizer(model, c: TrainConfig, steps_per_epoch: int):
    """timm's optimizer (weight decay = L2 strength) and a per-step cosine schedule with warmup, as
    every trial trains (``bench/bench_train.py``'s plain loop uses the same)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(model, opt=c.optimizer, lr=c.lr, weight_decay=c.weight_decay,
                                    layer_decay=c.layer_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=c.epochs,
                                       warmup_epochs=c.warmup_epochs, warmup_lr=c.lr * 0.01,
                                       min_lr=c.lr * 0.01, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def _split(index, name: str, transform, cached: bool) -> Split:
    ds = ImageList(index.root, index.splits[name], transform, pixels=_pixels(index, name) if cached else None)
    return Split(ds, np.array([lab for _, lab in ds.items], dtype=np.int8))


def _pixels(index, name: str):
    """The split decoded once on this node (``data.decoded``: built by the first worker here)."""
    return decoded.open_or_build(index.root, index.splits[name])


def _use_decode_cache(c: TrainConfig, index, sizes) -> bool:
    n = sum(len(index.splits.get(s, [])) for s in ("train", "valid", "test"))
    return decoded.use_cache(c.decode_cache, decoded.decoded_bytes(sizes, n))


def build(c: TrainConfig, index, candidate: str, rank: int, world: int, device: torch.device,
          max_train_batches: int | None = None) -> Trial:
    # the concrete input policy (auto -> crop or resize) from the training images' sizes, recorded
    # in the checkpoint's config: evaluation and predict use the same view
    sizes = sample_sizes(index.root, [sid for sid, _ in index.splits["train"]])
    view = views.view_of(c, sizes)
    c = c.model_copy(update=dict(input_policy=view.policy, img_size=view.img_size))
    random_seed(c.seed, 0)  # identical initial weights on every rank
    model = models.create(c.arch, pretrained=c.pretrained, num_classes=c.num_classes, img_size=c.img_size,
                          input_filter=c.input_filter)
    freeze_info = models.freeze_to_top(model, c.unfrozen)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size per trial: cuDNN picks its fastest kernels once
        if models.get_spec(c.arch).family not in TOKEN_FAMILIES:  # NHWC: tensor-core convolutions under AMP
            model = model.to(memory_format=torch.channels_last)
    dc = models.data_config(c.arch, c.img_size)
    train_items = index.splits["train"]
    cached = _use_decode_cache(c, index, sizes)  # decode once per node instead of every epoch
    train_ds = ImageList(index.root, train_items,
                         build_transform(view, dc["mean"], dc["std"], Augment(**c.aug.model_dump())),
                         pixels=_pixels(index, "train") if cached else None)
    eval_tf = build_transform(view, dc["mean"], dc["std"], None)
    c = c.model_copy(update=dict(loader_workers=loader_processes(c.loader_workers, device)))
    loader = make_loader(train_ds, batch_size=c.batch_size, rank=rank, world=world, shuffle=True, seed=c.seed,
                         workers=c.loader_workers, pin_memory=device.type == "cuda", oversample=c.oversample)
    steps = min(len(loader), max_train_batches or len(loader))
    optimizer, scheduler = make_optimizer(model, c, steps)
    amp = c.amp and device.type == "cuda"
    # bf16 needs no loss scaling; fp16 (older GPUs) does
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    return Trial(cfg=c, candidate=candidate, rank=rank, world=world, device=device, amp=amp, model=model,
                 freeze_info=freeze_info, data_config=dc, data_root=index.root, train_items=train_items,
                 loader=loader, steps_per_epoch=steps, val=_split(index, "valid", eval_tf, cached),
                 test=_split(index, "test", eval_tf, cached), optimizer=optimizer, scheduler=scheduler, scaler=scaler)


def restore(t: Trial, folder: str) -> dict | None:
    """Load a checkpoint into ``t`` (before DDP wraps the model). Returns the checkpoint's metrics
    if the trial had already run all its epochs (its driver was killed after the last one)."""
    t.model.load_state_dict(ckpt_io.load_weights(folder), strict=True)
    st = ckpt_io.load_train_state(folder)
    t.optimizer.load_state_dict(st["optimizer"])
    t.scheduler.load_state_dict(st["scheduler"])
    t.start_epoch, t.best_score, t.best_epoch = st["epoch"] + 1, st["best"], st.get("best_epoch")
    t.skipped = json.loads(st.get("skipped", "{}"))
    if t.start_epoch < t.cfg.epochs:
        return None
    return json.loads((Path(folder) / checkpoint_policy.META_FILE).read_text())["metrics"]


def train_one_epoch(t: Trial, epoch: int) -> dict:
    """The optimisation steps of one epoch; returns its loss and accuracy (over every rank)."""
    random_seed(t.cfg.seed * 1000 + epoch, t.rank * 100)  # augmentation RNG: per rank, resumable per epoch
    t.loader.sampler.set_epoch(epoch)
    t.model.train()
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0.0
    last = None
    for step, (x, y, _, bad) in enumerate(itertools.islice(t.loader, t.steps_per_epoch)):
        t.note_skipped(t.train_items, bad)
        if x is None:  # a whole batch unreadable: repeat the last one so DDP ranks stay in step
            if last is None:
                continue
            x, y = last
        last = (x, y)
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        if t.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(t.device, t.amp):
            logits = t.model(x)
        loss = models.loss_fn(logits, y)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step_update(epoch * t.steps_per_epoch + step + 1)
        with torch.no_grad():  # summed on the device: reading a GPU number each step would stall the GPU
            loss_sum = loss_sum + loss.detach().float() * len(y)
            correct = correct + ((models.prob_fake(logits) >= 0.5).long() == y).sum()
            seen += len(y)
    train_time = time.perf_counter() - t0
    loss_sum, correct, seen = _all_reduce_sum([float(loss_sum), float(correct), seen], t.device)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "train_time_s": train_time}


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
            p = views.predict_probs(model, x.to(device, non_blocking=True))
        p_all.append(p.cpu().numpy())
        idx_all.append(idx.numpy())
    mine = (np.concatenate(idx_all) if idx_all else np.zeros(0, int),
            np.concatenate(p_all) if p_all else np.zeros(0, np.float32), bad)
    probs = np.full(len(dataset), np.nan, dtype=np.float32)
    bad_all = []
    for idx, p, b in all_gather(mine):
        probs[idx] = p
        bad_all.extend(b)
    return probs, bad_all


def evaluate(t: Trial, split: Split) -> tuple[np.ndarray, dict]:
    """P(fake) for every image of ``split`` (NaN where unreadable) and its loss, acc, auc."""
    probs, bad = predict_split(t.model, split.dataset, batch_size=t.cfg.batch_size, rank=t.rank, world=t.world,
                               device=t.device, amp=t.amp, workers=t.cfg.loader_workers)
    t.note_skipped(split.dataset.items, bad)
    ok = np.isfinite(probs)
    y, p = split.labels[ok], probs[ok]
    return probs, {"loss": M.log_loss(y, p), "acc": M.accuracy(y, p), "auc": M.roc_auc(y, p)}


def pipelines(t: Trial) -> dict:
    """The input pipelines as torchvision prints them: what this trial's network saw."""
    return {"train": repr(t.loader.dataset.transform), "eval": repr(t.val.dataset.transform)}


def save(t: Trial, folder: str, epoch: int, metrics: dict, preds: tuple | None) -> None:
    """Write the checkpoint of ``epoch`` (0-based) into ``folder`` (rank 0 only)."""
    state = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(), "epoch": epoch,
             "best": t.best_score, "best_epoch": t.best_epoch, "skipped": json.dumps(t.skipped)}
    meta = {"metrics": metrics, "skipped": [{"path": k, "reason": r} for k, r in sorted(t.skipped.items())]}
    config_doc = {"train": t.cfg.model_dump(), "data": t.data_config, "freeze": t.freeze_info,
                  "candidate": t.candidate, "data_root": t.data_root,
                  "transforms": pipelines(t)}
    ckpt_io.save(folder, t.model, config_doc, meta, state)
    if preds is not None:
        store.write_predictions(_predictions(t, *preds), folder)


def _predictions(t: Trial, p_val: np.ndarray, p_test: np.ndarray):
    import pandas as pd

    frames = []
    for name, split, p in (("val", t.val, p_val), ("test", t.test, p_test)):
        ok = np.isfinite(p)  # unreadable samples have no prediction (and are listed in meta.json)
        ids = [sid for (sid, _), keep in zip(split.dataset.items, ok) if keep]
        frames.append(store.predictions_frame(t.candidate, name, ids, split.labels[ok], p[ok]))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- the loop

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


def resolve_index(index):
    from dfsearch.data.discover import DatasetIndex

    if not isinstance(index, (dict, DatasetIndex)):  # an ObjectRef put by the driver
        import ray

        index = ray.get(index)
    return index if isinstance(index, DatasetIndex) else DatasetIndex.from_json(index)


def train_loop(cfg: dict, session=None) -> None:
    """One trial on this worker. ``cfg``: ``{"train": TrainConfig dict, "index": DatasetIndex (json
    dict or ObjectRef), "candidate": str, "max_train_batches": int | None}``; ``session``:
    ``RayTrainSession`` (the default) or a warm pool's ``PoolSession``."""
    import ray
    import ray.train
    import ray.train.torch

    session = session or RayTrainSession()
    c = TrainConfig(**cfg["train"])
    ctx = ray.train.get_context()
    t = build(c, resolve_index(cfg["index"]), cfg.get("candidate", "trial"), ctx.get_world_rank(),
              ctx.get_world_size(), ray.train.torch.get_device(), cfg.get("max_train_batches"))
    with session.resume() as folder:
        finished = restore(t, folder) if folder is not None else None
    t.model = ray.train.torch.prepare_model(t.model)  # DDP: gloo on CPU, nccl on GPU
    nodes = ",".join(sorted(set(all_gather(ray.get_runtime_context().get_node_id()))))  # Ray's ids of this run's nodes
    if finished is not None:  # it had run every epoch before its driver was killed: say so again
        session.report(finished)
        return

    for epoch in range(t.start_epoch, c.epochs):
        t0 = time.perf_counter()
        train = train_one_epoch(t, epoch)
        p_val, v = evaluate(t, t.val)
        metrics = {"epoch": epoch + 1, **train, "val_loss": v["loss"], "val_acc": v["acc"], "val_auc": v["auc"],
                   "trainable_params": t.freeze_info["trainable_params"], "nan_loss": False,
                   "pg_id": session.pg_id, "worker_pid": os.getpid(), "worker_nodes": nodes}
        if not (math.isfinite(train["train_loss"]) and math.isfinite(v["loss"])):
            metrics.update(nan_loss=True, val_loss=float("nan"), val_acc=0.0, val_auc=0.0,
                           **{checkpoint_policy.SCORE_KEY: -math.inf})
            session.report(metrics)
            _say(t, f"epoch {epoch + 1}: loss is not finite; stopping this trial")
            return
        metrics[checkpoint_policy.SCORE_KEY] = checkpoint_policy.score(metrics, c.metric)
        preds = None
        if is_best := checkpoint_policy.improves(metrics[checkpoint_policy.SCORE_KEY], t.best_score):
            t.best_score, t.best_epoch = metrics[checkpoint_policy.SCORE_KEY], epoch + 1
            p_test, te = evaluate(t, t.test)
            metrics.update(test_loss=te["loss"], test_acc=te["acc"], test_auc=te["auc"])
            preds = (p_val, p_test)
        for part in all_gather(t.skipped):
            t.skipped.update(part)
        metrics.update(best_epoch=t.best_epoch, skipped_files=len(t.skipped),
                       epoch_time_s=time.perf_counter() - t0)
        if epoch == t.start_epoch:  # once per run of this loop: the driver logs them into the trial's W&B config
            metrics.update({f"transforms_{k}": v for k, v in pipelines(t).items()})
        _say(t, f"epoch {epoch + 1}/{c.epochs} train_loss {train['train_loss']:.4f} train_acc {train['train_acc']:.3f} "
                f"val_loss {v['loss']:.4f} val_acc {v['acc']:.3f} val_auc {v['auc']:.3f}"
                f"{'  *best' if is_best else ''} ({train['train_time_s']:.1f}s)")
        if t.rank == 0:  # one copy of the weights is enough: rank 0 saves, every rank reports
            with session.checkpoint_dir(epoch + 1) as folder:
                save(t, folder, epoch, metrics, preds)
                go = session.report(metrics, folder)
        else:
            go = session.report(metrics)
        if not go:
            return


def _say(t: Trial, message: str) -> None:
    if t.rank == 0:
        print(f"[{t.candidate}] {message}", flush=True)
