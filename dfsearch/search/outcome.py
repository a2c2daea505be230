"""The one rule for how a trial ended, used by the searcher (what Optuna is told) and the results
table (``trials.parquet``): ``completed`` (ran ``max_epochs``), ``pruned`` (stopped earlier: ASHA
or the epoch budget), ``failed`` (raised, its loss went NaN, or no epoch finished)."""

from __future__ import annotations

from typing import NamedTuple


class Outcome(NamedTuple):
    status: str  # completed | pruned | failed (the results table adds interrupted)
    reason: str


def classify(last: dict | None, error, max_epochs: int) -> Outcome:
    """``last``: the trial's last result (None if none), ``error``: what it raised (an exception,
    or True/False as Tune tells searchers)."""
    if error:
        err = getattr(error, "cause", None) or error  # a RayTaskError wraps what the trial raised
        text = str(err).strip().splitlines()[-1][:300] if isinstance(err, BaseException) and str(err).strip() else ""
        return Outcome("failed", f"{type(err).__name__}: {text}" if isinstance(err, BaseException) else "it raised")
    last = last or {}
    epochs = int(last.get("epoch", 0) or 0)
    if last.get("nan_loss"):
        return Outcome("failed", "loss became NaN/inf")
    if epochs >= max_epochs:
        return Outcome("completed", "")
    if epochs == 0:
        return Outcome("failed", "no epoch finished")
    return Outcome("pruned", f"stopped early after {epochs} epoch(s) (ASHA, or the epoch budget)")
