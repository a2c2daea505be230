"""The study's plots: Optuna's optimisation history and parameter importances, as PNGs."""

from __future__ import annotations

from pathlib import Path

from dfsearch.search.searcher import study_storage


def optuna_plots(run_dir: Path, name: str) -> dict:
    """``{plot name: PNG path}`` of what can be drawn (importances need enough finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = {}
    try:
        study = optuna.load_study(study_name=name, storage=study_storage(run_dir))
    except Exception:
        return out
    for key, fn in (("optuna_history", ovm.plot_optimization_history),
                    ("optuna_importances", ovm.plot_param_importances)):
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(run_dir / f"{key}.png", dpi=90)
            matplotlib.pyplot.close(fig)
            out[key] = run_dir / f"{key}.png"
        except Exception:  # too few finished trials for importances, etc.
            pass
    return out
