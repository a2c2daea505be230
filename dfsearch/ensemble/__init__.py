"""Greedy ensemble selection (Caruana et al. 2004) on the prediction store.

The pipeline, one module each:

``alignment.align(preds) -> Pool``
    Long contract frame (see ``dfsearch.store``) -> per split a dense matrix ``P[split]`` of shape
    (n_candidates, n_samples), labels ``y[split]`` and ``sample_ids[split]``.
``screening.screen(P_val, y_val) -> (keep, dropped)``
    Only candidates that beat chance on val enter the pool (a member at chance only shifts the
    blend's threshold).
``selection.select(P_val, y_val, top_k=..., rounds=..., metric=...) -> Selection``
    Forward greedy selection with replacement on val (``scorer.Scorer`` scores every candidate of a
    round at once); ``selection.rank_candidates`` orders candidates by their own val score.
``evaluation.evaluate(pool, selection, top_k) -> dict``
    Val and test metrics of the ensemble, the best single candidate and the naive top-k average;
    ``evaluation.calibrate_blend`` fits the blend's Platt map and threshold on val
    (``calibration``) and reports the calibrated ensemble.
``calibration``
    Platt maps: each candidate's before selection, the blend's after, and the blend's threshold.
``evaluation.compare(...)``
    The test split side by side, each entry calibrated at its own val threshold, with bootstrap
    intervals, the gain's paired interval and a row per fake source; ``cost`` what each costs at
    predict time.
``run.run_ensemble(predictions_dir, ..., out_dir) -> dict``
    All of the above on a store folder; writes ``ensemble.json`` and the ``plots`` (three PNGs);
    ``summary.format_summary(result)`` is what the command prints.

Importing this package is cheap: it defines ``METRICS`` and loads the submodule behind any other
public name on first use (PEP 562), so ``dfsearch.ensemble_cli`` can build its parser and reject
bad input without numpy, pandas, sklearn or matplotlib.
"""

from __future__ import annotations

import importlib

METRICS = ("accuracy", "log_loss", "roc_auc")  # what select() can optimise on val


def check_target_fpr(value, name: str = "target_fpr") -> None:
    """DfsearchError unless ``value`` is None or in (0, 1). Here, numpy-free, so that the command
    rejects a bad ``--target-fpr`` before it reads anything."""
    from dfsearch.errors import DfsearchError

    if value is not None and not 0 < value < 1:
        raise DfsearchError(f"{name} {value!r}: must be in (0, 1), the share of real images allowed to be "
                            f"called fake on val (e.g. 0.01)")

_LAZY = {
    "Pool": "alignment", "align": "alignment",
    "Scorer": "scorer",
    "screen": "screening",
    "Selection": "selection", "select": "selection", "rank_candidates": "selection",
    "blend": "evaluation", "evaluate": "evaluation",
    "write_plots": "plots",
    "run_ensemble": "run", "format_summary": "summary",
}

__all__ = ["METRICS", "check_target_fpr", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
