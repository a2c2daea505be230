"""One trial as its own Ray Train run: ``fit_trial`` starts a ``TorchTrainer`` whose workers run
``dfsearch.worker.train_loop``, and ``trial_summary`` turns its ``Result`` into plain data. Used
by ``dfsearch train`` (``train_cli``) and by a search with ``--no-pool``. Driver side: imports no
torch at module level, so Ray Train's controller does not pay for it."""

from __future__ import annotations

import json
from pathlib import Path

from dfsearch import checkpoint_policy


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point. A thin wrapper so that unpickling it (the controller does) imports
    nothing heavy; see ``dfsearch.worker.train_loop`` for the loop and ``cfg``."""
    from dfsearch.worker import train_loop

    train_loop(cfg)


def fit_trial(train_cfg, index, *, workers: int = 1, use_gpu: bool = False,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0, storage: str, name: str,
              candidate: str | None = None, max_train_batches: int | None = None,
              callbacks: list | None = None, max_failures: int = 0):
    """Run one TorchTrainer trial (``index``: the DatasetIndex as JSON, or an ObjectRef to it);
    returns the ``ray.train.Result``."""
    from ray.train import FailureConfig, RunConfig

    from dfsearch.cluster import scaling_config
    from dfsearch.ray_compat import trainer_class

    trainer = trainer_class()(
        train_loop_per_worker,
        train_loop_config={"train": train_cfg.model_dump(), "index": index,
                           "candidate": candidate or name, "max_train_batches": max_train_batches},
        scaling_config=scaling_config(workers, use_gpu, cpus_per_worker, gpus_per_worker),
        run_config=RunConfig(name=name, storage_path=str(storage), callbacks=callbacks or [],
                             checkpoint_config=checkpoint_policy.ray_checkpoint_config(),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()


def best_checkpoint_path(result) -> str | None:
    """The folder of the run's best checkpoint (``checkpoint_policy``), or None."""
    best = result.get_best_checkpoint(checkpoint_policy.SCORE_KEY, "max") if result.best_checkpoints else None
    return best.path if best is not None else None


def trial_summary(result, train_cfg, candidate: str, trial_id: str = "") -> dict:
    """Plain summary of a finished trial: last and best metrics, best checkpoint path."""
    path = best_checkpoint_path(result)
    best = json.loads((Path(path) / checkpoint_policy.META_FILE).read_text())["metrics"] if path else {}
    return {"candidate": candidate, "trial_id": trial_id, "arch": train_cfg.arch,
            "config": train_cfg.model_dump(), "last": dict(result.metrics or {}), "best": best,
            "checkpoint": path, "error": repr(result.error) if result.error else None}
