"""When trials stop early: ASHA on epochs (Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning"), and a stopper that ends the search after a total epoch budget."""

from __future__ import annotations

from ray.tune.stopper import Stopper


def make_scheduler(space, profile, kind: str = "asha"):
    """ASHA on ``epoch``, comparing ``space.prune_metric`` at its rungs (``fifo``: None, every trial
    runs ``max_epochs``). The metric is the scheduler's own: TPE may optimise another."""
    if kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=space.prune_metric, mode=space.prune_mode,
                         max_t=profile.max_epochs, grace_period=profile.grace_period,
                         reduction_factor=profile.reduction_factor)


class EpochBudget(Stopper):
    """Ends the search once its trials together have run ``total`` epochs."""

    def __init__(self, total: int):
        self.total = total
        self.epochs: dict[str, int] = {}  # trial -> epochs it reported (Tune repeats a trial's last result)

    def __call__(self, trial_id, result):
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get("epoch") or 0))
        return False

    def stop_all(self):
        return sum(self.epochs.values()) >= self.total
