"""The ``ensemble`` command's terminal summary of a ``run.run_ensemble`` result: the members, the
test table, the calibration, and the side-by-side comparison (intervals, gain, per fake source,
predict-time cost)."""

from __future__ import annotations


def _ci(m: dict, ci: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci.get(key) else f"{v:.3f}"


def _signed(d: dict) -> str:
    if d.get("diff") is None:
        return "n/a"
    ci = d.get("ci")
    if not ci:
        return f"{d['diff']:+.3f}"
    inside = " (inside the noise)" if ci[0] <= 0 <= ci[1] else ""
    return f"{d['diff']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]{inside}"


def format_comparison(result: dict) -> list[str]:
    """The side-by-side block of the summary (``result["comparison"]``)."""
    comp = result.get("comparison")
    if not comp:
        return []
    cost = comp.get("cost", {})
    names = {"ensemble": f"ensemble ({len(result['members'])})",
             "best_single": f"best single ({result['best_single']['candidate']})",
             "naive_top_k": f"naive top-{len(result['naive_top_k']['candidates'])} average"}
    lines = ["test, each calibrated on val at its val threshold: accuracy / roc_auc [95 % bootstrap], "
             "cost at predict time",
             f"  {'':<30}{'thr':>6}  {'accuracy':<22}{'roc_auc':<22}{'params':>9}{'img/s':>9}"]
    for key, label in names.items():
        row = comp["rows"][key]
        c = cost.get(key)
        label = label if len(label) <= 30 else label[:27] + "..."
        lines.append(f"  {label:<30}{row['threshold']:>6.3f}  {_ci(row['test'], row['ci'], 'accuracy'):<22}"
                     f"{_ci(row['test'], row['ci'], 'roc_auc'):<22}"
                     + (f"{c['params'] / 1e6:>8.2f}M{c['images_per_s']:>9.0f}" if c else f"{'n/a':>9}{'n/a':>9}"))
    g = comp["gain"]
    lines.append(f"  gain of the ensemble over the best single (paired): accuracy {_signed(g['accuracy'])}, "
                 f"roc_auc {_signed(g['roc_auc'])}")
    if comp.get("per_source"):
        lines.append("  per fake source (all real test images + that source's fakes): accuracy / roc_auc")
        for src, by in comp["per_source"].items():
            cells = ", ".join(f"{k.replace('_', ' ')} {v['accuracy']:.3f} / "
                              + ("n/a" if v["roc_auc"] is None else f"{v['roc_auc']:.3f}") for k, v in by.items())
            lines.append(f"    {src} ({next(iter(by.values()))['n_fake']} fakes): {cells}")
    return lines


def format_summary(result: dict) -> str:
    """A short terminal summary of a :func:`run_ensemble` result."""
    lines = [f"ensemble: {len(result['members'])} member(s), metric {result['metric']}, "
             f"top_k {result['top_k']}, best prefix {result.get('best_round', '?')}/{result['rounds']} rounds"]
    at_chance = result.get("excluded_chance_level") or []
    if at_chance:
        names = ", ".join(d["candidate"] for d in at_chance[:6]) + (", ..." if len(at_chance) > 6 else "")
        lines.append(f"  pool: {result['pool_size']} of {result['candidates']} candidates; {len(at_chance)} at chance "
                     f"on val left out ({names})")
    for m in result["members"]:
        arch = f"  [{m['arch']}]" if m.get("arch") else ""
        lines.append(f"  {m['weight']:6.3f}  {m['candidate']}{arch}")

    def fmt(v):
        return "   n/a" if v is None else f"{v:6.4f}"

    lines.append(f"{'test':<28}{'accuracy':>10}{'roc_auc':>10}{'log_loss':>10}")
    rows = [("ensemble", result["ensemble"]["test"]),
            (f"best single ({result['best_single']['candidate']})", result["best_single"]["test"]),
            (f"naive top-{len(result['naive_top_k']['candidates'])} average", result["naive_top_k"]["test"])]
    cal = result.get("calibration")
    if cal:
        rows.insert(1, (f"ensemble, calibrated @{cal['threshold']:.2f}", cal["test"]))
    for name, m in rows:
        name = name if len(name) <= 27 else name[:24] + "..."
        lines.append(f"{name:<28}{fmt(m['accuracy']):>10}{fmt(m['roc_auc']):>10}{fmt(m['log_loss']):>10}")
    cc = result.get("candidate_calibration")
    if cc:
        lines.append(f"candidates Platt-scaled on val before selection (each its own map; predict applies them): "
                     f"median val ECE {cc['val_ece_median_before']:.3f} -> {cc['val_ece_median_after']:.3f}")
    if cal:
        how = f"val FPR <= {cal['target_fpr']}" if cal.get("target_fpr") is not None else "best val accuracy"
        lines.append(f"calibrated on val: Platt slope {cal['slope']:.2f} intercept {cal['intercept']:+.2f}, "
                     f"threshold {cal['threshold']:.3f} "
                     f"({how}); test ECE {fmt(cal['test']['ece_uncalibrated']).strip()} -> "
                     f"{fmt(cal['test']['ece']).strip()}; dfsearch predict applies both")
    return "\n".join(lines + format_comparison(result))
