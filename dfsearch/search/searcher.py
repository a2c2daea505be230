"""The searcher: Optuna (multivariate TPE, Bergstra et al. 2011 "Algorithms for Hyper-Parameter
Optimization"; Falkner et al. 2018 for the multivariate kernel) driven through its ask-and-tell
interface (Akiba et al. 2019, "Optuna") as a Ray Tune ``Searcher``.

Why not Tune's ``OptunaSearch``: it tells Optuna that an ASHA-stopped trial is COMPLETE with its
truncated score, so TPE mistakes "stopped early" for "finished badly (or well)", and fixing that
needs its private ``_ot_trials``/``_ot_study``. Here Optuna hears ``outcome.classify``:

* ran ``max_epochs`` -> COMPLETE with its final metric;
* stopped earlier (ASHA, the budget) -> PRUNED; its per-epoch values were reported as
  intermediate values, which TPE uses for pruned trials;
* raised, or its loss went NaN -> FAIL.

The study lives in ``<run_dir>/optuna.db`` (sqlite), so ``--resume`` continues it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from dfsearch.search.outcome import classify
from dfsearch.search_space import SpaceSampler

STUDY_FILE = "optuna.db"
_STATES = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
           "failed": optuna.trial.TrialState.FAIL}


def study_storage(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir) / STUDY_FILE}"


def _unflatten(flat: dict) -> dict:
    """``{"arch": a, "a/lr": x, "a/aug/hflip": y}`` -> ``{"arch": a, "a": {"lr": x, "aug": {"hflip": y}}}``."""
    out: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


class OptunaSearcher(Searcher):
    """``space``: a ``SpaceSampler`` (Optuna define-by-run over a search space); ``enqueue``:
    configurations tried first (e.g. one per architecture). Picklable: Tune saves it in the
    experiment state; the study itself is in ``storage``."""

    def __init__(self, space: SpaceSampler, *, metric: str, mode: str, sampler, study_name: str, storage: str,
                 max_epochs: int, enqueue: list[dict] = ()):
        super().__init__(metric=metric, mode=mode)
        self.space, self.sampler, self.study_name, self.storage = space, sampler, study_name, storage
        self.max_epochs, self.enqueue = max_epochs, list(enqueue)
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._study = self._live = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_study"] = state["_live"] = None  # an open database and live Trials: rebuilt on use
        return state

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._live = {}
            self._study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                              direction="minimize" if self.mode == "min" else "maximize",
                                              load_if_exists=True)
            if not self._study.trials:
                for params in self.enqueue:
                    self._study.enqueue_trial(params)
        return self._study

    def suggest(self, trial_id: str) -> dict:
        ot = self.study.ask()
        constants = self.space(ot)
        self.numbers[trial_id] = ot.number
        self._live[trial_id] = ot
        return _unflatten({**ot.params, **constants})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.numbers:
            return
        if result and not error:
            # Tune does not pass the result that made ASHA stop a trial to on_trial_result: put it in
            # the curve (Optuna ignores a step reported twice)
            self._report(trial_id, result)
        status, _ = classify(result, error, self.max_epochs)
        value = result.get(self.metric) if status == "completed" else None
        try:
            self.study.tell(self.numbers.pop(trial_id), value, state=_STATES[status])
        except Exception as e:  # e.g. told twice after a resume: never fatal
            print(f"dfsearch: optuna: {e}", file=sys.stderr)
        self._live.pop(trial_id, None)

    def _report(self, trial_id: str, result: dict) -> None:
        # a trial asked before a restart has no live Trial here: its later epochs are not in its curve
        ot = (self._live or {}).get(trial_id)
        if ot is not None and self.metric in result and result.get("epoch"):
            try:
                ot.report(float(result[self.metric]), int(result["epoch"]))
            except Exception:  # a step reported twice, a NaN: the curve just lacks it
                pass

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def make_searcher(space, run_dir: Path, name: str, max_epochs: int, seed: int, kind: str = "tpe") -> OptunaSearcher:
    """The searcher over ``space``. ``tpe``: multivariate TPE, every architecture tried once first
    (its other parameters sampled); ``random``: Optuna's RandomSampler (the baseline of
    ``bench/search_efficiency.py``)."""
    if kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4,
                                             constant_liar=True)
    return OptunaSearcher(SpaceSampler(space.archs), metric=space.metric, mode=space.mode, sampler=sampler,
                          study_name=name, storage=study_storage(run_dir), max_epochs=max_epochs,
                          enqueue=[{"arch": a} for a in space.archs] if kind == "tpe" else [])
