"""The one checkpoint policy: which checkpoint of a trial is best, which are deleted, and when.

* score: ``score(metrics, metric)``, higher is better whatever the metric (``val_loss`` negated);
  every checkpoint's ``meta.json`` records it as ``ckpt_score``;
* best: the highest score that carries predictions (ties: the later epoch, as Ray's checkpoint
  manager keeps); ``best`` reads it from the folders, ``Result.get_best_checkpoint`` from Ray;
* kept: while a trial runs, its best and its latest (the latest is where an interrupted trial
  resumes); once it ended, its best only. ``prune`` is called by the writers only: a warm pool
  after each checkpoint it writes, the search's ``KeepBestCheckpoint`` callback when Tune ends a
  trial (Ray does not always enforce ``num_to_keep`` when a run is killed), and the results writer
  for a trial cut by an interrupted search (best and latest kept). Readers never delete;
* ``final.json``: a warm pool's record that a trial ended, with its last result, so a search
  killed before Tune saved that the trial ended reports it on ``--resume`` instead of training
  again from the one checkpoint that pruning kept.

Read from ``meta.json`` in each ``checkpoint_*`` folder, so the answers are right after a resume or
a kill too, whoever wrote the folders (Ray Train's checkpoint manager or a warm pool). Imports
nothing heavy.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

SCORE_KEY = "ckpt_score"
PREDICTIONS_FILE = "predictions.parquet"  # = store.PREDICTIONS_FILE (store imports pandas)
META_FILE = "meta.json"  # = checkpoint.META (checkpoint imports torch)
FINAL_FILE = "final.json"


def score(metrics: dict, metric: str) -> float:
    """Higher is better, whatever the metric (so Ray and our own bookkeeping agree)."""
    v = float(metrics[metric])
    return -v if metric == "val_loss" else v


def improves(new_score: float, best_score: float) -> bool:
    """Whether an epoch with ``new_score`` becomes the best (ties: the later epoch)."""
    return new_score >= best_score


def ray_checkpoint_config():
    """What Ray Train keeps of a ``TorchTrainer`` run: the best checkpoint by ``ckpt_score``."""
    from ray.train import CheckpointConfig

    return CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max")


def _checkpoints(trial_dir: Path):
    """(folder, metrics) of every complete checkpoint of a trial."""
    if not trial_dir.is_dir():
        return
    for ckpt in trial_dir.glob("checkpoint_*"):
        meta = ckpt / META_FILE
        if ckpt.is_dir() and meta.exists():
            try:
                yield ckpt, json.loads(meta.read_text())["metrics"]
            except (OSError, ValueError, KeyError):
                continue


def best(trial_dir: Path) -> tuple[Path, dict] | None:
    """The best checkpoint that carries predictions, with its metrics; None if there is none."""
    found = [(m.get(SCORE_KEY, -math.inf), m.get("epoch", 0), c, m) for c, m in _checkpoints(trial_dir)
             if (c / PREDICTIONS_FILE).exists()]
    if not found:
        return None
    _, _, ckpt, metrics = max(found, key=lambda x: (x[0], x[1]))
    return ckpt, metrics


def latest(trial_dir: Path) -> Path | None:
    """The checkpoint of the last epoch (where an interrupted trial resumes), or None."""
    found = [(m.get("epoch", 0), c) for c, m in _checkpoints(trial_dir)]
    return max(found)[1] if found else None


def drop_after(trial_dir: Path, epoch: int) -> None:
    """Delete the checkpoints of the epochs after ``epoch``: a lost run may have written one whose
    result the search never took (a retry must resume from an epoch it took, or it would see one twice)."""
    for ckpt, metrics in list(_checkpoints(trial_dir)):
        if metrics.get("epoch", 0) > epoch:
            shutil.rmtree(ckpt, ignore_errors=True)


def epoch_of(ckpt: Path) -> int:
    """The epoch a checkpoint folder was written after (from its ``meta.json``)."""
    return int(json.loads((Path(ckpt) / META_FILE).read_text())["metrics"].get("epoch", 0))


def prune(trial_dir: Path, running: bool = False) -> tuple[Path, dict] | None:
    """Delete every checkpoint folder of a trial but its best (and, while it ``running``, its
    latest); returns what ``best`` found."""
    found = best(trial_dir)
    keep = {found[0]} if found else set()
    if running and (last := latest(trial_dir)) is not None:
        keep.add(last)
    if found or running:
        for other in trial_dir.glob("checkpoint_*"):
            if other.is_dir() and other not in keep:
                shutil.rmtree(other, ignore_errors=True)
    return found


def write_final(trial_dir: Path, metrics: dict) -> None:
    """Record that a trial ended (all epochs, stopped by ASHA, or NaN) with its last result."""
    trial_dir.mkdir(parents=True, exist_ok=True)  # a trial that never checkpointed (NaN at epoch 1) has none
    tmp = trial_dir / (FINAL_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, default=float))
    tmp.replace(trial_dir / FINAL_FILE)


def read_final(trial_dir: Path) -> dict | None:
    try:
        return json.loads((trial_dir / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None
