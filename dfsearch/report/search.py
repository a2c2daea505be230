"""The report's search section: what was tried, what ASHA stopped, what Optuna learned.

Reads ``trials.parquet`` (one row per trial: ``dfsearch.search.results``), each trial's per-epoch
results (Tune's ``<trial folder>/result.json``: one JSON line per epoch, with ``trial_id``) and the
Optuna study in ``optuna.db``; plots the study with ``optuna.visualization.matplotlib``. A
``dfsearch train`` run has no study and no scheduler: its section shows the trial(s) from the
prediction store and says what a search would add.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dfsearch.report import html as H
from dfsearch.report.folder import CANDIDATES_FILE, STUDY_FILE, TRIALS_FILE, RunFolder

LEADERBOARD = ["trial_id", "arch", "status", "epochs", "best_epoch", "val_acc", "val_auc", "val_loss", "test_acc",
               "lr", "weight_decay", "batch_size", "optimizer", "unfrozen", "pretrained", "img_size",
               "wall_time_s"]
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc")
IMPORTANT_PARAMS = 6  # parameters on the parallel-coordinates plot (the most important ones)


def section(run: RunFolder) -> H.Section:
    """The ``#search`` section of ``run``. A search without ``trials.parquet`` (still running, or
    killed before it wrote one) still shows its per-epoch curves and its study."""
    if run.kind == "train":
        return _train_run(run)
    history = read_history(run.path)
    missing, body = [], []
    if run.has(TRIALS_FILE):
        trials = pd.read_parquet(run.path / TRIALS_FILE)
    else:
        trials = pd.DataFrame()
        missing.append(TRIALS_FILE)
        body.append(H.note(f"No {TRIALS_FILE} yet: a search writes it when it ends or is interrupted (this one is "
                           f"running, or was killed; `python run_search.py --resume --out {run.path.parent} --name "
                           f"{run.name}` continues it). No leaderboard and no early-stopping table until then."))
    if len(trials):
        metric = str(trials["metric"].iloc[0]) if "metric" in trials else "val_acc"
        body += _trials_html(run, trials, history, metric)
    elif run.has(TRIALS_FILE):
        missing.append("trials")
        body.append(H.note(f"{TRIALS_FILE} has no trials: the search ended before its first trial started."))
    metric = str(trials["metric"].iloc[0]) if len(trials) and "metric" in trials else "val_acc"

    body.append(H.h3("Per-trial curves", "search-curves"))
    if history.empty:
        missing.append("per-epoch history")
        body.append(H.note("No per-epoch results found (Tune's <trial folder>/result.json): the curves need them."))
    else:
        arch = dict(zip(trials.trial_id, trials.arch)) if len(trials) else {}
        body.append(H.figure(curves(history, arch), "per-trial curves",
                             "Loss and accuracy per epoch; solid: validation, dashed: training."))

    body.append(H.h3("Optuna", "search-optuna"))
    plots, importances, note = optuna_figures(run)
    if note:
        missing.append("Optuna study")
        body.append(H.note(note))
    body += [H.figure(fig, name, caption) for name, (fig, caption) in plots.items()]
    params = parallel_params(trials, importances) if len(trials) else []
    if params:
        body.append(H.figure(parallel_coordinates(trials, params, metric), "parallel coordinates",
                             f"Every trial through {'its most important' if importances else 'its'} parameters and "
                             f"its best {H.esc(metric)}; dashed: stopped by ASHA, grey: failed."))
    return H.Section("search", "Search", "\n".join(body), missing)


def _trials_html(run: RunFolder, trials: pd.DataFrame, history: pd.DataFrame, metric: str) -> list[str]:
    """The summary line, the leaderboard, the failures and what ASHA stopped (with a timeline)."""
    body = [H.p(spec_line(run.spec, trials)), H.h3("Leaderboard", "search-leaderboard"),
            H.p(f"Every trial, best first by its best-epoch {H.esc(metric)} (the metric the search optimised); "
                "failed trials last.", "small"),
            H.table(leaderboard(trials, metric), id="leaderboard", floats="{:.4g}")]
    for row in trials[trials.status == "failed"].itertuples():
        body.append(H.p(f"failed {H.esc(row.trial_id)} ({H.esc(row.arch)}): {H.esc(row.reason)}", "small"))
    body += [H.h3("Early stopping (ASHA)", "search-asha"), asha_html(trials, run.spec, history, metric)]
    if "start" in trials and trials["start"].notna().any():
        body.append(H.figure(timeline(trials[trials["start"].notna()]), "trial timeline",
                             "When each trial ran, coloured by how it ended; the number is the epochs it ran."))
    return body


def spec_line(spec: dict, trials: pd.DataFrame) -> str:
    counts = trials.status.value_counts().to_dict() if len(trials) else {}
    parts = [f"{k} {H.esc(spec[k])}" for k in ("space", "profile", "searcher", "scheduler", "num_samples",
                                                 "max_epochs", "grace_period", "workers_per_trial", "seed",
                                                 "budget_epochs") if spec.get(k) is not None]
    return (f"Search {H.code(spec.get('name', '?'))}: " + ", ".join(parts)
            + f". {len(trials)} trials: " + ", ".join(f"{n} {H.esc(k)}" for k, n in sorted(counts.items())) + ".")


def leaderboard(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every trial, ranked: finished ones (completed, pruned, interrupted) by ``metric``, failed last."""
    ascending = "loss" in metric
    df = trials.assign(_failed=trials.status == "failed")
    df = df.sort_values(["_failed", metric], ascending=[True, ascending], na_position="last")
    cols = [c for c in LEADERBOARD if c in df.columns]
    out = df[cols].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def read_history(run_dir: Path) -> pd.DataFrame:
    """Per-epoch results of every trial: ``trial_id`` and ``HISTORY_KEYS`` (present ones), from
    the trial folders' ``result.json`` (the last report of an epoch wins: a resumed trial repeats
    none, but an interrupted one may)."""
    rows = []
    for f in sorted(run_dir.glob("*/result.json")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("epoch") is None:
                continue
            rows.append({"trial_id": str(r.get("trial_id") or f.parent.name),
                         **{k: r.get(k) for k in HISTORY_KEYS}})
    if not rows:
        return pd.DataFrame(columns=["trial_id", *HISTORY_KEYS])
    df = pd.DataFrame(rows).drop_duplicates(["trial_id", "epoch"], keep="last")
    return df.sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def asha_html(trials: pd.DataFrame, spec: dict, history: pd.DataFrame, metric: str) -> str:
    """Which trials the scheduler stopped, after which epoch, at what score, and when."""
    max_epochs = spec.get("max_epochs")
    if spec.get("scheduler") == "fifo":
        intro = ("The scheduler was FIFO (no early stopping): every trial had max_epochs, unless the epoch "
                 "budget ended it.")
    else:
        intro = (f"ASHA stops a trial at a rung (after the grace period of {spec.get('grace_period', '?')} epoch(s), "
                 f"then at each reduction step) when it is not in the top fraction there; max_epochs "
                 f"{max_epochs if max_epochs is not None else '?'}.")
    pruned = trials[trials.status == "pruned"]
    if pruned.empty:
        return H.p(H.esc(intro) + " No trial was stopped early.")
    t0 = trials["start"].min() if "start" in trials else np.nan
    last = history.groupby("trial_id").last() if not history.empty else pd.DataFrame()
    rows = []
    for r in pruned.itertuples():
        at = last[metric].get(r.trial_id, np.nan) if metric in last else np.nan
        rows.append({"trial_id": r.trial_id, "arch": r.arch, "stopped after epoch": r.epochs,
                     "of": max_epochs, f"{metric} at stop": at, f"best {metric}": getattr(r, metric, np.nan),
                     "stopped at (s into the search)": (r.start + r.wall_time_s - t0)
                     if np.isfinite(t0) and np.isfinite(r.start) else np.nan,
                     "reason": r.reason})
    return (H.p(H.esc(intro) + f" {len(pruned)} of {len(trials)} trials were stopped early:")
            + H.table(pd.DataFrame(rows), id="asha", floats="{:.4g}"))


STATUS_COLORS = {"completed": "tab:green", "pruned": "tab:orange", "failed": "tab:red", "interrupted": "tab:gray"}


def timeline(trials: pd.DataFrame):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    df = trials.sort_values("start").reset_index(drop=True)
    t0 = df["start"].min()
    fig = Figure(figsize=(9, 0.35 * len(df) + 1.2))
    ax = fig.add_subplot()
    for i, r in enumerate(df.itertuples()):
        ax.barh(i, r.wall_time_s, left=r.start - t0, color=STATUS_COLORS.get(r.status, "tab:blue"))
        ax.text(r.start - t0 + r.wall_time_s, i, f" {r.epochs}", va="center", fontsize=8)
    ax.set_yticks(range(len(df)), [f"{r.trial_id} ({r.arch})" for r in df.itertuples()], fontsize=8)
    ax.invert_yaxis()
    seen = [s for s in STATUS_COLORS if s in set(df.status)]
    ax.legend([Patch(color=STATUS_COLORS[s]) for s in seen], seen, fontsize=8, loc="lower right")
    ax.set(xlabel="seconds since the first trial started")
    fig.tight_layout()
    return fig


def curves(history: pd.DataFrame, arch: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for k, (tid, h) in enumerate(history.groupby("trial_id", sort=True)):
        color = f"C{k % 10}"
        label = f"{tid} ({arch.get(tid, '?')})"
        for ax, what in zip(axes, ("loss", "acc")):
            if f"val_{what}" in h and h[f"val_{what}"].notna().any():
                ax.plot(h.epoch, h[f"val_{what}"], "-o", color=color, ms=3, label=label)
            if f"train_{what}" in h and h[f"train_{what}"].notna().any():
                ax.plot(h.epoch, h[f"train_{what}"], "--", color=color, lw=1)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def optuna_figures(run: RunFolder) -> tuple[dict, dict, str | None]:
    """``({name: (figure, caption)}, importances, note)``: the study's optimisation history and
    parameter importances (fANOVA, Optuna's default; ``{param: importance}``, {} when they cannot be
    computed); the note says what could not be drawn and why."""
    if not run.has(STUDY_FILE):
        return {}, {}, f"No {STUDY_FILE} in the run folder: no Optuna study to plot."
    import matplotlib

    matplotlib.use("Agg")  # Optuna's matplotlib plots go through pyplot
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{run.path / STUDY_FILE}"
    try:
        names = optuna.study.get_all_study_names(storage)
        name = run.spec.get("name") if run.spec.get("name") in names else (names[0] if len(names) == 1 else None)
        if name is None:
            return {}, {}, f"{STUDY_FILE} holds {len(names)} studies ({', '.join(names)}), none named after the run."
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception as e:  # noqa: BLE001 - a damaged database: the rest of the page still renders
        return {}, {}, f"{STUDY_FILE} cannot be read: {type(e).__name__}: {e}"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out, notes, importances = {}, [], {}
    # rc_context: Optuna's plots switch pyplot to the ggplot style globally; the page's other figures keep theirs
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
        try:
            importances = optuna.importance.get_param_importances(study)
        except Exception:  # noqa: BLE001 - too few completed trials; the plot below says why
            pass
        for key, fn, caption, height in (
                ("optuna history", ovm.plot_optimization_history,
                 f"Objective of each completed trial (a pruned trial has no final objective) and the best so "
                 f"far; {len(done)} of {len(study.trials)} trials completed.", 4.5),
                ("parameter importances", ovm.plot_param_importances,
                 f"fANOVA importances over the {len(done)} completed trials (few trials: indicative only).",
                 max(4.5, 0.22 * len(importances) + 1.2))):
            try:
                out[key] = (_fig(fn(study), height), caption)
            except Exception as e:  # noqa: BLE001 - e.g. too few completed trials for importances
                notes.append(f"{key}: not drawn ({type(e).__name__}: {e})")
    return out, importances, ("; ".join(notes) if notes else None)


def _fig(ax, height: float = 4.5):
    fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
    fig.set_size_inches(8, height)
    fig.tight_layout()
    return fig


PARALLEL_DEFAULT = ["arch", "lr", "weight_decay", "batch_size", "optimizer", "unfrozen"]


def parallel_params(trials: pd.DataFrame, importances: dict) -> list[str]:
    """The trials-table columns of the most important parameters (Optuna names them per
    architecture, ``small_cnn/aug/noise_std``: the table's column is ``aug_noise_std``), that vary."""
    archs = set(trials.arch)
    cols = []
    for name in list(importances) + PARALLEL_DEFAULT:
        parts = name.split("/")
        col = "_".join(parts[1:] if parts[0] in archs and len(parts) > 1 else parts)
        if col in trials and col not in cols and trials[col].astype(str).nunique() > 1:
            cols.append(col)
    if "arch" in trials and trials.arch.nunique() > 1 and "arch" not in cols[:IMPORTANT_PARAMS]:
        cols.insert(0, "arch")
    return cols[:IMPORTANT_PARAMS]


def parallel_coordinates(trials: pd.DataFrame, params: list[str], metric: str):
    """Every trial (pruned ones dashed, failed grey) as a line through ``params`` and ``metric``;
    each axis scaled to its range (log where a positive value spans more than 20x), categories
    evenly spaced. Drawn from the trials table rather than by Optuna: Optuna's view shows completed
    trials only, and a per-architecture parameter is missing for every trial of another one."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    axes_cols = params + [metric]
    pos, labels = {}, {}
    for col in axes_cols:
        v = trials[col]
        num = pd.to_numeric(v, errors="coerce")
        if num.notna().all() and v.dtype != object:
            x = num.astype(float)
            log = bool((x > 0).all() and x.max() / x.min() > 20)
            x = np.log10(x) if log else x
            lo, hi = float(x.min()), float(x.max())
            pos[col] = (x - lo) / (hi - lo) if hi > lo else x * 0 + 0.5
            fmt = "{:.2g}"
            labels[col] = [(0.0, fmt.format(10 ** lo if log else lo)), (1.0, fmt.format(10 ** hi if log else hi))]
        else:
            cats = sorted(v.astype(str).unique())
            where = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            pos[col] = v.astype(str).map(where)
            labels[col] = [(y, c) for c, y in where.items()]
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    score = trials[metric].astype(float)
    norm = Normalize(np.nanmin(score), np.nanmax(score)) if score.notna().any() else Normalize(0, 1)
    cmap = colormaps["viridis"]
    for i, r in enumerate(trials.itertuples()):
        ys = [pos[c].iloc[i] for c in axes_cols]
        color = "lightgrey" if r.status == "failed" or not np.isfinite(score.iloc[i]) else cmap(norm(score.iloc[i]))
        ax.plot(range(len(axes_cols)), ys, color=color, lw=1.8, ls="--" if r.status == "pruned" else "-", alpha=0.9)
    for k, col in enumerate(axes_cols):
        ax.axvline(k, color="black", lw=0.8)
        for y, text in labels[col]:
            ax.text(k + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(axes_cols)), axes_cols, fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes_cols) - 0.6)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    fig.tight_layout()
    return fig


def _train_run(run: RunFolder) -> H.Section:
    """A ``dfsearch train`` output: its trial(s) from the prediction store, and what is missing."""
    body = [H.note(f"{run.path} is a `dfsearch train` output, not a search: it has no {TRIALS_FILE}, no Optuna "
                   f"study and no scheduler, so there is no leaderboard of a search, no early stopping and no "
                   f"parameter importances. `python run_search.py` makes a search's run folder.")]
    if run.has(CANDIDATES_FILE):
        cands = pd.read_parquet(run.path / CANDIDATES_FILE)
        body += [H.h3("Trials", "search-leaderboard"),
                 H.table(cands.drop(columns=["config"]).sort_values("val_acc", ascending=False),
                         id="leaderboard", floats="{:.4g}")]
    history = read_history(run.path)
    if not history.empty:
        body += [H.h3("Per-trial curves", "search-curves"),
                 H.figure(curves(history, {}), "per-trial curves", "solid: validation, dashed: training.")]
    return H.Section("search", "Search", "\n".join(body), ["search (a dfsearch train run)"])
