"""The Tune trainable of every trial: turn Tune's config into a ``TrainConfig``, ask the backend
(``backends``: a warm pool, or the trial's own ``TorchTrainer``) for the trial's stream of epoch
results, and hand each to Tune (ASHA, Optuna, the callbacks see the same either way)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares (picklable: Tune saves it with the trainable)."""

    space: object     # search_space.Space
    profile: object   # search_space.Profile
    seed: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    train_storage: str          # <run_dir>/train: one folder per trial
    remote: Optional[str] = None  # a URI --out: the run folder there
    broker: Optional[str] = None  # the warm pools' broker (its name); None: one TorchTrainer per trial
    max_failures: int = 0       # times a trial that lost a worker or node resumes (warm pools)


def trial_fn(config: dict, index=None, setup: TrialSetup = None) -> None:
    from ray import tune

    from dfsearch.search.backends import make_backend

    trial_id = tune.get_context().get_trial_id()
    train_cfg = setup.space.train_config(config, setup.profile, seed=setup.seed)
    for metrics in make_backend(setup, index).epochs(trial_id, train_cfg):
        tune.report(metrics)


def make_trainable(setup: TrialSetup, index_json: dict, resources: dict):
    """``resources``: what each trial's trainable asks for (``plan.driver_resources``)."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_fn, index=index_json, setup=setup), resources)
