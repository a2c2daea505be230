"""A trial's checkpoint folders on disk: find the best and the latest, delete the rest.

Read from ``meta.json`` in each ``checkpoint_*`` folder, so the answers are right after a resume or
a kill too, whoever wrote the folders (Ray Train's checkpoint manager or a warm pool). Imports
nothing heavy: the search driver and each trial's Tune trainable use it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

PREDICTIONS_FILE = "predictions.parquet"  # = store.PREDICTIONS_FILE (store imports pandas)
FINAL_FILE = "final.json"  # a warm pool's record that a trial ended, with its last result


def write_final(trial_dir: Path, metrics: dict) -> None:
    """Record that a trial ended (all epochs, stopped by ASHA, or NaN) with its last result: a search
    killed before Tune saved that the trial ended reports this on ``--resume`` instead of training
    again from the one checkpoint that pruning kept."""
    trial_dir.mkdir(parents=True, exist_ok=True)  # a trial that never checkpointed (NaN at epoch 1) has none
    tmp = trial_dir / (FINAL_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, default=float))
    tmp.replace(trial_dir / FINAL_FILE)


def read_final(trial_dir: Path) -> dict | None:
    try:
        return json.loads((trial_dir / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None


def _checkpoints(trial_dir: Path):
    """(folder, metrics) of every complete checkpoint of a trial."""
    if not trial_dir.is_dir():
        return
    for ckpt in trial_dir.glob("checkpoint_*"):
        meta = ckpt / "meta.json"
        if ckpt.is_dir() and meta.exists():
            try:
                yield ckpt, json.loads(meta.read_text())["metrics"]
            except (OSError, ValueError, KeyError):
                continue


def best(trial_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint with the best ``ckpt_score`` (ties: the later epoch) that carries predictions,
    with its metrics; None if there is none."""
    found = [(m.get("ckpt_score", -math.inf), m.get("epoch", 0), c, m) for c, m in _checkpoints(trial_dir)
             if (c / PREDICTIONS_FILE).exists()]
    if not found:
        return None
    _, _, ckpt, metrics = max(found, key=lambda x: (x[0], x[1]))
    return ckpt, metrics


def latest(trial_dir: Path) -> Path | None:
    """The checkpoint of the last epoch (where an interrupted trial resumes), or None."""
    found = [(m.get("epoch", 0), c) for c, m in _checkpoints(trial_dir)]
    return max(found)[1] if found else None


def prune(trial_dir: Path, keep_latest: bool = False) -> tuple[Path, dict] | None:
    """Delete every checkpoint folder of a trial but its best (and, while it runs, its latest);
    returns what ``best`` found. Ray does not always enforce ``num_to_keep`` when a run is killed,
    so a finished trial is pruned here whoever wrote it."""
    found = best(trial_dir)
    keep = {found[0]} if found else set()
    if keep_latest and (last := latest(trial_dir)) is not None:
        keep.add(last)
    if found or keep_latest:
        for other in trial_dir.glob("checkpoint_*"):
            if other.is_dir() and other not in keep:
                shutil.rmtree(other, ignore_errors=True)
    return found
