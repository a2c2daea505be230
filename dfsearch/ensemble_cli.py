"""Greedy (Caruana) ensemble selection on a run's prediction store, checked and logged to W&B.

    ensemble.py [--run DIR | --predictions DIR] [--top-k 4] [--metric accuracy] [--rounds 50]
                [--nbest N] [--target-fpr F] [--keep-chance-level] [--out DIR] [--json] [--wandb-mode MODE]
                [--wandb-project NAME]

``--run DIR`` is a ``dfsearch train`` / search output folder (``predictions.parquet`` +
``candidates.parquet``); without it the most recently written ``runs/*/predictions.parquet`` is
used. ``--predictions DIR`` takes any folder of contract parquet files (see ``dfsearch.store``).

Steps: selection (``dfsearch.ensemble.run_ensemble``) into a scratch folder; then the selected
members' checkpoints are loaded once to prove ``dfsearch predict`` can use them (a missing or
corrupted checkpoint is an error naming the candidate and the path); only then are
``ensemble.json`` and the plots moved into ``--out`` (default ``<run>/ensemble``), so a failed
check never replaces a good ensemble. Finally one W&B run (job_type "ensemble", group = the run
folder's name) logs the members, the metrics and the plots.

Errors print ``ensemble: error: <message>`` on stderr and exit with status 2.

Imports are deferred: building the parser and rejecting bad input (a missing ``--run`` folder,
a bad ``--top-k``) needs neither numpy/pandas nor torch/Ray; ``dfsearch.ensemble``'s modules are
loaded when the selection starts, ``dfsearch.checkpoint`` (torch) when the members are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dfsearch import commands, remote, tracking
from dfsearch.ensemble import METRICS, check_target_fpr  # numpy-free: the package loads its modules lazily
from dfsearch.errors import DfsearchError, run_command

# = dfsearch.store.PREDICTIONS_FILE (tests/test_ensemble.py checks it), not imported from there
# because dfsearch.store imports pandas and pyarrow (~1.3 s), which bad input does not need
PREDICTIONS_FILE = "predictions.parquet"
RUNS_DIR = "runs"
PLOTS = ("roc.png", "confusion.png", "trajectory.png")
SCALARS = ("accuracy", "roc_auc", "log_loss", "f1", "precision", "recall", "average_precision", "eer", "ece")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", help="search/train output folder with predictions.parquet + candidates.parquet, "
                                   "or its URI (s3://...: fetched, and the ensemble copied back) "
                                   f"(default: the most recent {RUNS_DIR}/*/ holding a {PREDICTIONS_FILE})")
    src.add_argument("--predictions", help="any folder of prediction-contract parquet files")
    p.add_argument("--top-k", type=int, default=4, help="most distinct members (default 4)")
    p.add_argument("--metric", choices=METRICS, default="accuracy", help="val metric to optimise")
    p.add_argument("--rounds", type=int, default=50, help="greedy selection rounds (default 50)")
    p.add_argument("--nbest", type=int, help="only the N best candidates (by val score) enter the pool")
    p.add_argument("--target-fpr", type=float,
                   help="choose the decision threshold as the lowest whose val false-positive rate (real images "
                        "called fake) is at most this, in (0, 1); default: the threshold of best val accuracy")
    p.add_argument("--keep-chance-level", action="store_true",
                   help="let candidates at chance on val (AUC not 2 SE above 0.5, or near-constant output) "
                        "into the pool; by default they are left out and listed")
    p.add_argument("--raw-candidates", action="store_true",
                   help="select on the candidates' raw probabilities; by default each is Platt-scaled on val first "
                        "(predict applies the same maps), so no member is chosen only to shift the threshold")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the test intervals in the side-by-side table (0: none)")
    p.add_argument("--no-cost", action="store_true",
                   help="do not load and time the checkpoints for the predict-time cost (parameters, images/s)")
    p.add_argument("--out", help="output folder (default: <run>/ensemble)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--wandb-mode", choices=tracking.MODES,
                   help="default: online with W&B credentials, else offline")
    p.add_argument("--wandb-project", default="dfsearch")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ensemble`` as a subcommand (e.g. of ``dfsearch``)."""
    p = subparsers.add_parser("ensemble", help="greedy (Caruana) ensemble of a run's candidates")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return p


def latest_run(root: str | Path = RUNS_DIR) -> Path:
    """The folder directly under ``root`` whose ``predictions.parquet`` was written last."""
    root = Path(root)
    found = sorted(root.glob(f"*/{PREDICTIONS_FILE}"), key=lambda f: f.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise DfsearchError(f"no run found: no {root}/*/{PREDICTIONS_FILE} under {root.resolve()}; "
                            f"pass --run DIR (a search/train output folder) or --predictions DIR")
    return found[-1].parent


def _resolve_checkpoint(path: str, store_dir: Path) -> Path:
    """Absolute paths as they are; relative ones against the store folder (else the cwd)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return store_dir / p


def check_members(members: list[dict], store_dir: Path) -> None:
    """Load each member's checkpoint (config + weights, strict) once; DfsearchError naming the
    candidate and the path on the first that fails. Members without a checkpoint are skipped."""
    from dfsearch.checkpoint import load_model

    for m in members:
        ckpt = m.get("checkpoint")
        if not ckpt:
            continue
        if "://" in ckpt and not ckpt.startswith("file://"):
            print(f"ensemble: note: member {m['candidate']!r} has a remote checkpoint {ckpt}; not checked",
                  file=sys.stderr)
            continue
        path = _resolve_checkpoint(ckpt.removeprefix("file://"), store_dir)
        if not path.is_dir():
            raise DfsearchError(f"member {m['candidate']!r}: checkpoint folder {path} does not exist "
                                f"(from candidates.parquet); re-run its trial or drop it from the store")
        try:
            load_model(path)
        except DfsearchError as e:
            raise DfsearchError(f"member {m['candidate']!r}: unusable checkpoint {path}: {e}") from None
        except Exception as e:  # a config that no longer builds a model, etc.
            raise DfsearchError(f"member {m['candidate']!r}: unusable checkpoint {path}: "
                                f"{type(e).__name__}: {e}") from None


def _metrics_row(result: dict) -> dict:
    """Flat ``{split}/{who}/{metric}`` scalars for W&B."""
    out = {}
    blocks = {who: result[who] for who in ("ensemble", "best_single", "naive_top_k")}
    blocks["ensemble_calibrated"] = result["calibration"]
    for who, block in blocks.items():
        for split in ("val", "test"):
            for k in SCALARS:
                out[f"{split}/{who}/{k}"] = block[split].get(k)
    out["calibration/slope"] = result["calibration"]["slope"]
    out["calibration/intercept"] = result["calibration"]["intercept"]
    out["calibration/threshold"] = result["calibration"]["threshold"]
    return out


MISTAKES_SHOWN = 16  # rows of W&B's table of the most confident test mistakes


def log_to_wandb(result: dict, out: Path, group: str, mode: str, project: str,
                 store_dir: Path | None = None) -> object | None:
    """One W&B run for the ensemble: the selection, metrics, plots, a table of the most confident
    test mistakes (thumbnails where the dataset is known) and the ensemble as an artifact whose
    inputs are its members' model artifacts; returns the finished run (or None)."""
    import pandas as pd

    config = {k: result[k] for k in ("top_k", "metric", "rounds", "nbest", "chance_z", "source")}
    run = tracking.start_run(mode, project, group=group, job_type="ensemble", name=f"{group}-ensemble",
                             config=config, dir=out)
    if run is None:
        return None
    for r in result["trajectory"]:
        tracking.log(run, {"selection/round": r["round"], "selection/val_score": r["val_score"],
                           "selection/val_log_loss": r["val_log_loss"]})
    tracking.log_table(run, "members", pd.DataFrame(result["members"]))
    tracking.log(run, {**_metrics_row(result), "best_round": result["best_round"],
                       "pool_size": result["pool_size"], "n_members": len(result["members"]),
                       "excluded_chance_level": len(result["excluded_chance_level"])})
    comp = result.get("comparison") or {}  # each entry calibrated at its own val threshold
    tracking.log(run, {**{f"compare/{k}/test_{m}": v["test"][m] for k, v in comp.get("rows", {}).items()
                          for m in ("accuracy", "roc_auc")},
                       **{f"compare/gain_{m}": d["diff"] for m, d in comp.get("gain", {}).items()}})
    tracking.log_images(run, {name.removesuffix(".png"): out / name for name in PLOTS})
    try:
        if store_dir is not None:
            _log_mistakes(run, result, store_dir)
            _log_ensemble_artifact(run, result, out, group, store_dir)
    except Exception as e:  # W&B's extras never fail the ensemble, which is written already
        print(f"ensemble: note: W&B artifact or table not logged ({type(e).__name__}: {e})", file=sys.stderr)
    finally:
        tracking.finish(run)
    return run


def _log_mistakes(run, result: dict, store_dir: Path) -> None:
    """``test_mistakes``: the ensemble's most confident wrong test predictions, with thumbnails."""
    from dfsearch.ensemble.mistakes import confident_mistakes

    df = confident_mistakes(store_dir, result, "test", MISTAKES_SHOWN)
    root = tracking.dataset_root(store_dir)
    images = {i: Path(root) / sid for i, sid in df.sample_id.items()} if root else {}
    tracking.log_image_table(run, "test_mistakes", df, images)


def _log_ensemble_artifact(run, result: dict, out: Path, group: str, store_dir: Path) -> None:
    """ensemble.json and the plots as an "ensemble" artifact; its inputs, the members' models."""
    from dfsearch.store import read_candidates

    cands = read_candidates(store_dir)
    trial_of = dict(zip(cands.candidate, cands.trial_id)) if cands is not None else {}
    members = [{**{k: m.get(k) for k in ("candidate", "arch", "weight", "calibration")},
                "model_artifact": tracking.model_artifact(group, trial_of[m["candidate"]])
                if m["candidate"] in trial_of else None} for m in result["members"]]
    tracking.log_artifact(
        run, tracking.artifact_name("ensemble", group), "ensemble",
        {"ensemble.json": out / "ensemble.json", **{p: out / p for p in PLOTS}},
        {"members": members, "calibration": {k: result["calibration"][k] for k in ("slope", "intercept", "threshold")},
         "test": {k: result["calibration"]["test"].get(k) for k in ("accuracy", "roc_auc")},
         "source": result["source"]},
        uses=[m["model_artifact"] for m in members if m["model_artifact"]])


def run(args) -> int:
    """``ensemble``: select, check the members' checkpoints, write ``--out``, log, report."""
    for flag, value in (("--top-k", args.top_k), ("--rounds", args.rounds), ("--nbest", args.nbest)):
        if value is not None and value < 1:
            raise DfsearchError(f"{flag} {value}: must be >= 1")
    check_target_fpr(args.target_fpr, "--target-fpr")
    if args.bootstrap < 0:
        raise DfsearchError(f"--bootstrap {args.bootstrap}: must be >= 0 (0: no intervals)")
    if args.out and remote.is_uri(args.out):  # not taken for a local folder "s3:/..."
        raise DfsearchError(f"--out {args.out}: a local folder only; with --run URI the ensemble is copied back "
                            f"to URI/ensemble by itself")
    target = None  # --run URI: fetched into a local staging copy; the ensemble is copied back
    if args.run and remote.is_uri(args.run):
        target = remote.open_uri(args.run, "--run")
        if not target.exists(PREDICTIONS_FILE):
            raise DfsearchError(f"--run {args.run}: no {PREDICTIONS_FILE} there; expected a search's run folder "
                                f"(`run_search.py --out URI --name NAME` writes URI/NAME)")
        args.run = str(remote.staging_dir(target.uri))
        print(f"ensemble: fetching {target.uri} into {args.run}", file=sys.stderr)
        remote.fetch(target, Path(args.run), "--run", exclude=("pools",))
    if args.predictions:
        store_dir = Path(args.predictions)
    elif args.run:
        store_dir = Path(args.run)
        if not (store_dir / PREDICTIONS_FILE).is_file():
            raise DfsearchError(f"--run {store_dir}: no {PREDICTIONS_FILE} there; expected a search/train "
                                f"output folder (or use --predictions for a folder of parquet files)")
    else:
        store_dir = latest_run()
        print(f"ensemble: using the latest run {store_dir.resolve()} (pass --run DIR to choose)",
              file=sys.stderr)
    store_dir = store_dir.resolve()
    out = Path(args.out) if args.out else store_dir / "ensemble"

    from dfsearch.ensemble import format_summary, run_ensemble  # numpy, pandas, sklearn: after the checks
    from dfsearch.ensemble.screening import DEFAULT_Z

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    print(f"ensemble: selecting from {store_dir}" + ("" if args.no_cost else
          "; then the members' checkpoints are loaded and timed (--no-cost skips the timing)"), file=sys.stderr)
    try:
        result = run_ensemble(store_dir, top_k=args.top_k, rounds=args.rounds, metric=args.metric,
                              nbest=args.nbest, chance_z=None if args.keep_chance_level else DEFAULT_Z,
                              target_fpr=args.target_fpr, n_boot=args.bootstrap, cost=not args.no_cost,
                              calibrate_candidates=not args.raw_candidates,
                              out_dir=scratch)
        print(f"ensemble: checking that predict can load the {len(result['members'])} member(s)", file=sys.stderr)
        check_members(result["members"], store_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in scratch.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    commands.record(out.parent if out.parent == store_dir else out, commands.typed(args, "python ensemble.py"))
    mode = tracking.resolve_mode(args.wandb_mode, dir=out)
    log_to_wandb(result, out, group=store_dir.name, mode=mode, project=args.wandb_project, store_dir=store_dir)
    copied = None
    if target is not None and not args.out:
        copied = target.child(out.name)
        if not remote.try_push(out, copied, "the ensemble", delete=True):
            copied = None
        else:  # the run's command log too (this command is in it): `dfsearch report URI` shows it
            remote.try_push(store_dir, target, "the command log",
                            exclude=tuple(p.name for p in store_dir.iterdir() if p.name != commands.FILE))
    if args.json:
        print(json.dumps({**result, "out_dir": str(out), **({"uri": copied.uri} if copied else {})}))
        return 0
    print(format_summary(result))
    print(f"\nwrote {out / 'ensemble.json'}" + (f" (copied to {copied.uri})" if copied else ""))
    print(f"plots {', '.join(str(out / p) for p in PLOTS)}")
    if mode == "offline":
        print(f"W&B offline run under {out / 'wandb'} (upload with `wandb sync {out / 'wandb'}/offline-run-*`)")
    if all(m.get("checkpoint") for m in result["members"]):
        print(f"\nnext: dfsearch predict --ensemble {out / 'ensemble.json'} IMAGES...")
    else:
        print("\nnote: some members have no checkpoint (no candidates.parquet), so `dfsearch predict` "
              "cannot use this ensemble")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = commands.command_line("python ensemble.py", argv)
    return run_command("ensemble", run, args)


if __name__ == "__main__":
    sys.exit(main())
