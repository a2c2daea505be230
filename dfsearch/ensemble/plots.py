"""The three PNGs of an ensemble: ``roc.png``, ``confusion.png``, ``trajectory.png``.

ROC curves (the ensemble and each member, on test) are sklearn's ``RocCurveDisplay`` and the
confusion matrix (the ensemble on test) is its ``ConfusionMatrixDisplay``. Figures are
``matplotlib.figure.Figure`` objects drawn on axes passed in and saved with the Agg canvas, so no
pyplot figure is opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfsearch.ensemble.alignment import Pool
from dfsearch.ensemble.evaluation import blend
from dfsearch.ensemble.selection import Selection

FILES = ("roc.png", "confusion.png", "trajectory.png")
DPI = 110


def write_plots(out_dir: Path, pool: Pool, selection: Selection, result: dict) -> None:
    """Write :data:`FILES` into ``out_dir``; ``result`` is the ``run_ensemble`` dict (for the
    test confusion matrix)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    out_dir = Path(out_dir)
    y = pool.y["test"]

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if len(np.unique(y)) == 2:
        for i, w in selection.weights.items():
            member = RocCurveDisplay.from_predictions(y, blend(pool.P["test"], {i: 1.0}), ax=ax,
                                                      name=f"{pool.candidates[i]} (w={w:.2f})")
            member.line_.set(linewidth=1, alpha=0.7)
        ens = RocCurveDisplay.from_predictions(y, blend(pool.P["test"], selection.weights), ax=ax,
                                               name="ensemble", plot_chance_level=True)
        ens.line_.set(linewidth=2.5, color="black")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "test has one class only: no ROC", ha="center")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    _save(fig, out_dir / "roc.png")

    cm = np.asarray(result["ensemble"]["test"]["confusion_matrix"])
    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(cm, display_labels=["real", "fake"]).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set(xlabel="predicted", ylabel="true", title="ensemble, test")
    _save(fig, out_dir / "confusion.png")

    traj = selection.trajectory
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    ax.plot([r["round"] for r in traj], [r["val_score"] for r in traj], marker=".")
    ax.axvline(selection.best_round, color="red", ls="--", label=f"best prefix: {selection.best_round}")
    ax.set(xlabel="round", ylabel=f"val {selection.metric}", title="greedy selection trajectory")
    ax.legend()
    _save(fig, out_dir / "trajectory.png")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
