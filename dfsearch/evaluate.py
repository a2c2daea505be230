"""``dfsearch evaluate``: how good an ensemble, or one checkpoint, is on labelled images, with intervals.

    dfsearch evaluate (--ensemble E | --checkpoint C) --data DIR [--data DIR2 ...] [--json]
                      [--bootstrap N] [--batch-size N] [--device cpu|cuda]
    dfsearch evaluate --run RUN [--data DIR2 ...]      # the run's ensemble on the run's data, and on DIR2

Every folder under DIR that holds a class folder pair, ``real`` / ``fake`` (any case) or
CNNDetection's ``0_real`` / ``1_fake``, is one evaluation set, named by its path under DIR::

    a dataset (generic, 140k, OpenForensics)   valid, test          (train is left out: the models saw it)
    test images grouped by generator           test/<generator>/{real,fake}, or CNNDetection's
                                               test/<generator>/{0_real,1_fake}
    one folder                                 DIR/{real,fake}       (the set is called ".")
    fakes grouped by generator                 test/{real,fake/<generator>}: a row per generator
                                               (``test [blend]``: all of test's real images + those fakes),
                                               as the embedded benchmark writes its families

Sets under one top folder (``test/progan``, ``test/stylegan``) are also scored pooled (``test``).
Each set gets ACC, balanced ACC, precision / recall / F1, ROC-AUC, AP, EER, log loss, ECE and the
confusion matrix (``dfsearch.metrics.binary_metrics``) at the ensemble's calibrated threshold (a
checkpoint: 0.5), and a 95 % percentile bootstrap interval (Efron & Tibshirani 1993) on each
headline number, resampling the images of the set. Several ``--data`` give the cross-dataset
table: the same models, selected on the run's data, scored on each dataset; ``--run RUN`` takes the
run's ensemble (``RUN/ensemble/ensemble.json``) and puts the dataset the search selected on
(``search.json``) first.

Bad input is said before any model runs: a folder with no class folders, a set whose images are
smaller than a member's crop. A set with one class only gets the metrics that need one class
(accuracy, log loss, ECE) and says which it cannot give. Unreadable images are listed and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfsearch.errors import DfsearchError

CLASS_DIRS = {"real": 0, "fake": 1, "0_real": 0, "1_fake": 1}
TRAIN_NAMES = ("train",)
NEED_BOTH = ("balanced_accuracy", "roc_auc", "average_precision", "eer")  # of metrics.HEADLINE
MAX_DEPTH = 4


@dataclass
class EvalSet:
    """One labelled set: ``data`` (the folder given, absolute), ``name`` (the set's path under it),
    ``items`` [(image path relative to ``data``, label)]."""

    data: str
    name: str
    items: list[tuple[str, int]] = field(default_factory=list)


# ----------------------------------------------------------------------------- finding the sets


def find_sets(data: str | os.PathLike) -> tuple[list[EvalSet], list[str]]:
    """The evaluation sets under ``data`` and notes (what was left out). Raises DfsearchError when
    ``data`` does not exist or holds no class folders (naming what is accepted)."""
    from dfsearch.data.images import is_image_name

    root = Path(data).resolve()
    if not root.is_dir():
        raise DfsearchError(f"--data {data}: no such folder")
    by_parent: dict[str, EvalSet] = {}
    notes: list[str] = []
    for folder, dirs, _ in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        if len(rel.parts) >= MAX_DEPTH:
            dirs[:] = []
        classes = [d for d in dirs if d.lower() in CLASS_DIRS]
        if not classes:
            continue
        name = rel.as_posix()
        if rel.parts and rel.parts[-1].lower() in TRAIN_NAMES:
            notes.append(f"left out {name}: a training split (the models saw it)")
            dirs[:] = []
            continue
        s = by_parent.setdefault(name, EvalSet(str(root), name))
        fakes_by_source: dict[str, list] = {}
        for d in classes:
            label = CLASS_DIRS[d.lower()]
            for sub, subdirs, files in os.walk(Path(folder) / d):
                subdirs.sort()
                rel_sub = Path(sub).relative_to(root).as_posix()
                found = [(f"{rel_sub}/{f}", label) for f in sorted(files) if is_image_name(f)]
                s.items += found
                below = Path(sub).relative_to(Path(folder) / d).parts
                if label == 1 and below:  # fake/<generator>/...: scored per generator too
                    fakes_by_source.setdefault(below[0], []).extend(found)
        if len(fakes_by_source) > 1:
            reals = [it for it in s.items if it[1] == 0]
            for source, fakes in sorted(fakes_by_source.items()):
                by_parent[f"{name} [{source}]"] = EvalSet(str(root), f"{name} [{source}]", reals + fakes)
        dirs[:] = [d for d in dirs if d not in classes]  # class folders may hold sub-folders of images
    sets = [s for s in sorted(by_parent.values(), key=lambda s: s.name) if s.items]
    if not sets:
        raise DfsearchError(f"--data {data}: no evaluation set found: no folder holds real/ and fake/ (or "
                            f"CNNDetection's 0_real/ and 1_fake/) folders with images (searched {MAX_DEPTH} "
                            f"levels down; train/ splits are left out)")
    return sets + _pooled(sets), notes


def _pooled(sets: list[EvalSet]) -> list[EvalSet]:
    """A pooled set per top folder that holds several sets (``test`` over ``test/<generator>``)."""
    groups: dict[str, list[EvalSet]] = {}
    for s in sets:
        top = s.name.split("/")[0]
        if top != s.name:
            groups.setdefault(top, []).append(s)
    return [EvalSet(g[0].data, top, [it for s in g for it in s.items]) for top, g in groups.items()
            if len(g) > 1 and top not in {s.name for s in sets}]


# ----------------------------------------------------------------------------- metrics with intervals


def score(labels, probs, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric of one set at ``threshold``, its intervals (``ci``) and what it cannot give."""
    from dfsearch.metrics import binary_metrics, bootstrap_intervals, headline

    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    m = {**binary_metrics(y, p, threshold), **headline(y, p, threshold)}
    m["n_real"], m["n_fake"] = int((y == 0).sum()), int((y == 1).sum())
    m["ci"] = bootstrap_intervals(y, p, threshold, n_boot, seed)
    if not (m["n_real"] and m["n_fake"]):
        only = "fake" if m["n_fake"] else "real"
        m["not_given"] = (f"only {only} images: {', '.join(NEED_BOTH)} need both classes; accuracy here is the "
                          f"share called {only}")
    return m


# ----------------------------------------------------------------------------- running the models


def load_models(ensemble: str | None, checkpoint: str | None, device: str):
    """``(members, calibration, source)``: an ensemble.json's members and calibration, or one
    checkpoint folder as a one-member ensemble at threshold 0.5."""
    from dfsearch import predict
    from dfsearch.remote import is_uri

    if ensemble:
        if is_uri(ensemble):
            ensemble = str(predict.fetch_ensemble(ensemble))
        members, calibration = predict.load_ensemble(ensemble, device=device)
        return members, calibration, str(ensemble)
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise DfsearchError(f"--checkpoint {checkpoint}: not a checkpoint folder (expected config.json and "
                            f"model.safetensors in it, as runs/<search>/train/<trial>/checkpoint_* hold)")
    doc = {"members": [{"candidate": folder.parent.name or folder.name, "weight": 1.0,
                        "checkpoint": str(folder.resolve())}]}
    return predict._members(doc, folder, device), predict.Calibration(), str(folder)


def check_sizes(members, s: EvalSet, results: dict) -> list[dict]:
    """The unreadable images of ``s`` (``{path, reason}``; dropped from ``s``) by ``results``
    (``check_files`` of its images: header, sizes); DfsearchError when an image is smaller than a
    member's crop."""
    from dfsearch.data.views import resolve

    bad = [{"path": f"{s.data}/{p}", "reason": results[p][0]} for p, _ in s.items if results[p][0]]
    s.items = [(p, lab) for p, lab in s.items if results[p][0] is None]
    sizes = {results[p][1] for p, _ in s.items}
    for m in members:
        v = m.view
        where = f"--data {s.data}: set {s.name!r} for member {m.candidate} ({m.arch}, input_policy {v.policy})"
        got = resolve(v.policy, v.img_size, sizes, eval_view=v.eval_view, eval_tiles=v.eval_tiles, zoom=v.zoom,
                      where=where) if sizes else v
        if got.img_size != v.img_size:
            raise DfsearchError(f"{where}: it takes {v.crop} px images whole; these are {sorted(sizes)[:3]}")
    return bad


def evaluate(members, calibration, sets: list[EvalSet], *, batch_size: int = 64, device: str = "cpu",
             n_boot: int = 1000, seed: int = 0, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """``(rows, unreadable)``: one row per set (``{data, set, **score}``); each image is predicted
    once even when it is in a pooled set too."""
    from dfsearch.data.images import check_files
    from dfsearch.predict import predict_images

    paths: dict[str, set] = {}  # per data folder: pooled and per-generator sets share images, read each once
    for s in sets:
        paths.setdefault(s.data, set()).update(p for p, _ in s.items)
    results = {root: check_files(root, sorted(ps), "header", progress=False, sizes=True) for root, ps in paths.items()}
    unreadable = []
    for s in sets:
        unreadable += check_sizes(members, s, results[s.data])  # all sets, before any model runs
    unique = sorted({f"{s.data}/{p}" for s in sets for p, _ in s.items})
    preds, bad = predict_images(members, [Path(p) for p in unique], batch_size=batch_size, device=device,
                                progress=progress, calibration=calibration)
    unreadable += bad
    prob = {p["path"]: p["prob_fake"] for p in preds}
    rows = []
    for s in sets:
        kept = [(f"{s.data}/{p}", lab) for p, lab in s.items if f"{s.data}/{p}" in prob]
        if not kept:
            rows.append(dict(data=s.data, set=s.name, n=0, not_given="no readable image"))
            continue
        y = [lab for _, lab in kept]
        rows.append(dict(data=s.data, set=s.name, **score(y, [prob[p] for p, _ in kept], calibration.threshold,
                                                          n_boot, seed)))
    return rows, sorted({u["path"]: u for u in unreadable}.values(), key=lambda u: u["path"])


# ----------------------------------------------------------------------------- the command


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="metrics with bootstrap intervals of an ensemble or a checkpoint "
                                               "on labelled images, per split / generator / dataset")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ensemble", help="ensemble.json (a path or a URI) written by the ensemble command")
    which.add_argument("--checkpoint", help="one checkpoint folder (runs/<search>/train/<trial>/checkpoint_*)")
    which.add_argument("--run", help="a search's run folder: its ensemble, on the data it was selected on first")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="a folder of labelled images; repeat for a cross-dataset table (required unless --run)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)
    return p


def _fmt(m: dict, key: str) -> str:
    v = m.get(key, float("nan"))
    if not np.isfinite(v):
        return "-"
    ci = m.get("ci", {}).get(key)
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table (a line per set, intervals in brackets)."""
    head = ["data", "set", "real", "fake", "acc", "bal acc", "roc auc", "ap", "eer", "log loss", "ece"]
    lines = [head]
    for r in rows:
        lines.append([Path(r["data"]).name, r["set"], str(r.get("n_real", 0)), str(r.get("n_fake", 0)),
                      _fmt(r, "accuracy"), _fmt(r, "balanced_accuracy"), _fmt(r, "roc_auc"),
                      _fmt(r, "average_precision"), _fmt(r, "eer"),
                      f"{r['log_loss']:.3f}" if "log_loss" in r else "-", f"{r['ece']:.3f}" if "ece" in r else "-"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _run_ensemble_and_data(run: str) -> tuple[str, str]:
    """(ensemble.json, the dataset it was selected on) of a search's run folder."""
    from dfsearch.search.spec import SPEC_FILE, SearchSpec

    folder = Path(run)
    if not (folder / SPEC_FILE).is_file():
        raise DfsearchError(f"--run {run}: no {SPEC_FILE} there; expected a search's run folder (runs/<name>)")
    ensemble = folder / "ensemble" / "ensemble.json"
    if not ensemble.is_file():
        raise DfsearchError(f"--run {run}: no ensemble/ensemble.json yet; run `ensemble.py --run {run}` first")
    data = SearchSpec.load(folder).data
    if not data:
        raise DfsearchError(f"--run {run}: its {SPEC_FILE} names no dataset; pass --ensemble and --data instead")
    return str(ensemble), data


def run(args) -> int:
    from dfsearch.predict import _device

    if args.batch_size < 1:
        raise DfsearchError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.bootstrap < 0:
        raise DfsearchError(f"--bootstrap {args.bootstrap}: must be >= 0 (0: no intervals)")
    if args.run:
        args.ensemble, selected_on = _run_ensemble_and_data(args.run)
        args.data = [selected_on] + [d for d in args.data if Path(d).resolve() != Path(selected_on).resolve()]
    if not args.data:
        raise DfsearchError("--data DIR is required (or --run RUN, which brings its own dataset)")
    found = [find_sets(d) for d in args.data]  # every folder checked before any model is loaded
    sets = [s for ss, _ in found for s in ss]
    device = _device(args.device)
    members, calibration, source = load_models(args.ensemble, args.checkpoint, device)
    rows, unreadable = evaluate(members, calibration, sets, batch_size=args.batch_size, device=device,
                                n_boot=args.bootstrap, seed=args.seed, progress=not args.json)
    notes = [n for _, ns in found for n in ns]
    threshold = (f"calibrated, threshold {calibration.threshold:.3f}" if calibration.calibrated
                 else "uncalibrated, threshold 0.5")
    if args.json:
        print(json.dumps(dict(source=source, calibration=calibration.describe(), rows=rows, unreadable=unreadable,
                              notes=notes, bootstrap=args.bootstrap), default=float))
    else:
        for n in notes:
            print(f"evaluate: {n}", file=sys.stderr)
        for u in unreadable:
            print(f"evaluate: skipped {u['path']}: {u['reason']}", file=sys.stderr)
        print(table(rows))
        for r in rows:
            if "not_given" in r:
                print(f"  {r['set']}: {r['not_given']}")
    n_images = len({p for s in sets for p, _ in s.items})
    print(f"evaluate: {len(members)} member(s) of {source} ({threshold}) on {n_images} images in "
          f"{len(rows)} set(s) of {len(args.data)} dataset(s); {len(unreadable)} unreadable skipped; "
          f"[intervals]: 95 % bootstrap, {args.bootstrap} resamples", file=sys.stderr if args.json else sys.stdout)
    return 0
