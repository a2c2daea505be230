"""The report's ensemble section: ``<run>/ensemble/ensemble.json`` (``dfsearch.ensemble.run``) shown.

Numbers come from the JSON as the ensemble command wrote them (its bootstrap intervals, paired
gain and per-family ROC-AUC intervals); the per-family table adds Wilson intervals (binomial,
95 %) on each family's accuracy and detection rate, which the counts in the JSON determine. The
PR curve and the reliability diagram need the ensemble's per-image test probabilities: they are
rebuilt from ``predictions.parquet`` exactly as ``dfsearch predict`` computes them (each member
through its own Platt map, the weighted average, the blend's map) and checked against the JSON's
accuracy before they are drawn. The ROC and selection-trajectory plots the ensemble command drew
are embedded as they are.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dfsearch.report import html as H
from dfsearch.report.folder import ENSEMBLE_FILE, PREDICTIONS_FILE, RunFolder

ENTRIES = {"ensemble": "ensemble", "best_single": "best single", "naive_top_k": "naive top-k average"}


def section(run: RunFolder) -> H.Section:
    """The ``#ensemble`` section of ``run``; without ``ensemble/ensemble.json``, how to make one."""
    path = run.path / ENSEMBLE_FILE
    if not path.is_file():
        return H.Section("ensemble", "Ensemble", H.note(
            f"No ensemble yet ({ENSEMBLE_FILE} is not in the run folder): run "
            f"`python ensemble.py --run {run.path}` (then `dfsearch report {run.path}` again)."), ["ensemble"])
    doc = json.loads(path.read_text())
    missing, body = [], [H.p(summary_line(doc))]
    body += [H.h3("Members and weights", "ensemble-members"), H.table(members_table(doc), id="members")]
    if doc.get("excluded_chance_level"):
        body.append(H.p("Left out of the pool as at chance on val: " + "; ".join(
            f"{H.esc(d['candidate'])} ({H.esc(d['reason'])})" for d in doc["excluded_chance_level"]) + ".", "small"))
    comp = doc.get("comparison") or {}
    if comp.get("rows"):
        body += [H.h3("Test: ensemble against the best single model", "ensemble-comparison"),
                 H.p("Each calibrated on val at its own val-chosen threshold; 95 % bootstrap intervals over the "
                     "test images; cost at predict time.", "small"),
                 H.table(comparison_table(doc), id="comparison"), H.p(gain_line(comp.get("gain") or {}))]
    else:
        missing.append("comparison")
        body.append(H.note("ensemble.json has no side-by-side comparison (made by an older ensemble.py)."))
    if comp.get("per_source"):
        body += [H.h3("Per generator family", "ensemble-families"),
                 H.p("Each family's fakes against all real test images, at each entry's threshold; Wilson 95 % "
                     "intervals (binomial) on accuracy and on the fraction of that family's fakes detected; "
                     "a percentile bootstrap over those images on ROC-AUC.",
                     "small"),
                 H.table(families_table(comp, _n_real(doc)), id="families")]
    else:
        missing.append("per-family table")
        body.append(H.note("The test fakes are not grouped by generator family: no per-family table."))

    body.append(H.h3("Curves, confusion, calibration", "ensemble-plots"))
    figures = [H.png_file(path.parent / "roc.png", "ROC", "ROC on test (the ensemble and each member), as "
                                                           "`ensemble.py` drew it.")]
    if comp.get("rows"):
        figures.append(H.figure(confusion(comp["rows"]["ensemble"]), "confusion matrix",
                                "The ensemble on test at its calibrated val threshold."))
    probs, note = test_probabilities(run, doc)
    if probs is None:
        missing.append("per-image test probabilities")
        body.append(H.note(f"PR curve and reliability diagram not drawn: {note}"))
    else:
        figures += [H.figure(pr_curves(probs), "precision-recall", "Precision-recall on test."),
                    H.figure(reliability(probs), "reliability diagram",
                             "Reliability on test: the ensemble's calibrated probabilities (Platt, fitted on val) "
                             "and the raw weighted average.")]
    figures.append(H.png_file(path.parent / "trajectory.png", "selection trajectory",
                              "Greedy selection: val score per round, and the prefix kept."))
    body += [f for f in figures if f]
    return H.Section("ensemble", "Ensemble", "\n".join(body), missing)


def _ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def summary_line(doc: dict) -> str:
    cal = doc.get("calibration") or {}
    how = (f"val FPR <= {cal['target_fpr']}" if cal.get("target_fpr") is not None else "best val accuracy")
    line = (f"{len(doc['members'])} member(s) chosen by greedy (Caruana) selection on val {H.esc(doc['metric'])} "
            f"from a pool of {doc.get('pool_size', '?')} of {doc.get('candidates', '?')} candidates (top_k "
            f"{doc.get('top_k')}, best prefix {doc.get('best_round')} of {doc.get('rounds')} rounds).")
    if cal:
        line += (f" Blend calibrated on val: Platt slope {cal['slope']:.2f}, intercept {cal['intercept']:+.2f}, "
                 f"threshold {cal['threshold']:.3f} ({how}); test ECE {cal['test']['ece_uncalibrated']:.3f} "
                 f"uncalibrated, {cal['test']['ece']:.3f} calibrated.")
    return line


def members_table(doc: dict) -> pd.DataFrame:
    return pd.DataFrame([{"candidate": m["candidate"], "arch": m.get("arch"), "weight": m["weight"],
                          "Platt slope": (m.get("calibration") or {}).get("slope"),
                          "Platt intercept": (m.get("calibration") or {}).get("intercept"),
                          "checkpoint": m.get("checkpoint")} for m in doc["members"]])


def comparison_table(doc: dict) -> pd.DataFrame:
    comp = doc["comparison"]
    cost = comp.get("cost") or {}
    who = {"ensemble": ", ".join(m["candidate"] for m in doc["members"]),
           "best_single": doc["best_single"]["candidate"], "naive_top_k": ", ".join(doc["naive_top_k"]["candidates"])}
    rows = []
    for key, row in comp["rows"].items():
        c = cost.get(key)
        rows.append({"entry": ENTRIES.get(key, key), "models": who.get(key, ""), "threshold": f"{row['threshold']:.3f}",
                     "accuracy [95 % CI]": _ci(row["test"].get("accuracy"), row["ci"].get("accuracy")),
                     "ROC-AUC [95 % CI]": _ci(row["test"].get("roc_auc"), row["ci"].get("roc_auc")),
                     "ECE": row["test"].get("ece"),
                     "params": f"{c['params'] / 1e6:.2f}M" if c else "n/a",
                     "images/s": f"{c['images_per_s']:.0f}" if c else "n/a"})
    return pd.DataFrame(rows)


def gain_line(gain: dict) -> str:
    parts = []
    for k in ("accuracy", "roc_auc"):
        d = gain.get(k)
        if not d or d.get("diff") is None:
            continue
        ci = d.get("ci")
        s = f"{k} {d['diff']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        if ci:
            s += " (inside the noise: the interval holds 0)" if ci[0] <= 0 <= ci[1] else \
                (" (a gain)" if ci[0] > 0 else " (a loss)")
        parts.append(s)
    return "Gain of the ensemble over the best single model (paired bootstrap, same test images): " + "; ".join(
        parts) + "." if parts else "No gain over the best single recorded."


def _n_real(doc: dict) -> int | None:
    """Real test images: the first row of the ensemble's test confusion matrix ([[tn, fp], [fn, tp]])."""
    try:
        return int(sum(doc["comparison"]["rows"]["ensemble"]["test"]["confusion_matrix"][0]))
    except (KeyError, TypeError, IndexError):
        return None


def wilson(p: float | None, n: int | None) -> list[float] | None:
    """95 % Wilson interval of a proportion ``p`` of ``n`` (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    if p is None or not n:
        return None
    ci = binomtest(int(round(p * n)), n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def families_table(comp: dict, n_real: int | None) -> pd.DataFrame:
    rows = []
    for fam, by in comp["per_source"].items():
        for key, v in by.items():
            n = v["n_fake"] + n_real if n_real is not None else None
            rows.append({"family": fam, "entry": ENTRIES.get(key, key), "fakes": v["n_fake"],
                         "accuracy [95 % CI]": _ci(v["accuracy"], wilson(v["accuracy"], n)),
                         "fakes detected [95 % CI]": _ci(v.get("detected"), wilson(v.get("detected"), v["n_fake"])),
                         "ROC-AUC [95 % CI]": _ci(v.get("roc_auc"), v.get("roc_auc_ci"))})
    return pd.DataFrame(rows)


def confusion(row: dict):
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(3.8, 3.4))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.asarray(row["test"]["confusion_matrix"]), display_labels=["real", "fake"]).plot(
        ax=ax, cmap="Blues", colorbar=False)
    ax.set(xlabel="predicted", ylabel="true", title=f"ensemble, test @ {row['threshold']:.3f}")
    fig.tight_layout()
    return fig


def test_probabilities(run: RunFolder, doc: dict) -> tuple[dict | None, str | None]:
    """``({"y", "ensemble", "raw", "members": {name: probs}}, None)`` on test, or ``(None, why)``.

    Rebuilt as ``dfsearch predict`` does, then checked: the calibrated blend at the stored threshold
    must give the JSON's test accuracy (else the store changed since the ensemble was made)."""
    from dfsearch.ensemble.evaluation import ensemble_probs

    store = run.path if run.has(PREDICTIONS_FILE) else None
    if store is None:
        return None, f"no {PREDICTIONS_FILE} in the run folder"
    preds = pd.read_parquet(store / PREDICTIONS_FILE, filters=[("split", "==", "test")])
    names = [m["candidate"] for m in doc["members"]]
    lost = sorted(set(names) - set(preds.candidate))
    if lost:
        return None, f"{PREDICTIONS_FILE} has no test predictions of member(s) {', '.join(lost)}"
    wide = preds.pivot(index="sample_id", columns="candidate", values="prob_fake").sort_index()
    y = preds.drop_duplicates("sample_id").set_index("sample_id").loc[wide.index, "label"].to_numpy().astype(int)
    P = wide[names].to_numpy(np.float32).T
    cal = doc.get("calibration") or {"slope": 1.0, "intercept": 0.0, "threshold": 0.5}
    p, raw, _ = ensemble_probs(P, doc["members"], cal)
    want = ((doc.get("comparison") or {}).get("rows") or {}).get("ensemble", {}).get("test", {}).get("accuracy")
    got = float(np.mean((p >= cal["threshold"]) == (y == 1)))
    if want is not None and abs(got - want) > 1e-6:
        return None, (f"the probabilities rebuilt from {PREDICTIONS_FILE} give test accuracy {got:.4f}, "
                      f"{ENSEMBLE_FILE} says {want:.4f}: the store changed since the ensemble was made")
    return {"y": y, "ensemble": p, "raw": raw, "members": dict(zip(names, P))}, None


def pr_curves(probs: dict):
    from matplotlib.figure import Figure
    from sklearn.metrics import PrecisionRecallDisplay

    fig = Figure(figsize=(5, 4.4))
    ax = fig.add_subplot()
    for name, p in probs["members"].items():
        d = PrecisionRecallDisplay.from_predictions(probs["y"], np.nan_to_num(p, nan=0.5), ax=ax, name=name)
        d.line_.set(linewidth=1, alpha=0.7)
    d = PrecisionRecallDisplay.from_predictions(probs["y"], probs["ensemble"], ax=ax, name="ensemble",
                                                plot_chance_level=True)
    d.line_.set(linewidth=2.5, color="black")
    ax.legend(loc="lower left", fontsize=7)
    ax.set(title="precision-recall on test")
    fig.tight_layout()
    return fig


def reliability(probs: dict):
    from matplotlib.figure import Figure
    from sklearn.calibration import CalibrationDisplay

    fig = Figure(figsize=(5, 4.4))
    ax = fig.add_subplot()
    CalibrationDisplay.from_predictions(probs["y"], probs["ensemble"], n_bins=10, ax=ax, name="ensemble (calibrated)")
    CalibrationDisplay.from_predictions(probs["y"], np.clip(probs["raw"], 0, 1), n_bins=10, ax=ax,
                                        name="weighted average (raw)")
    ax.set(title="reliability on test", xlabel="mean predicted P(fake)", ylabel="fraction fake")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig
