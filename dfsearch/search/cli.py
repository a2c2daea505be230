"""Flags of ``python run_search.py`` (and ``dfsearch search``); the work is in ``dfsearch.search.driver``."""

from __future__ import annotations

import argparse
import contextlib
import sys

from dfsearch.errors import run_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="all_models", help="search space: a name in search_spaces/ or a .yaml path")
    p.add_argument("--profile", help="budget profile in the space file (default: gpu if GPUs, else cpu)")
    p.add_argument("--data", help="dataset folder (default: the embedded synthetic benchmark)")
    p.add_argument("--out", default="runs", help="output root, a folder or a URI (s3://bucket/prefix, gs://, "
                                                 "file://...: staged locally, copied there); the run dir is OUT/NAME")
    p.add_argument("--name", help="search name (default: search-TIMESTAMP)")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides the profile)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial / ASHA max_t (overrides the profile)")
    p.add_argument("--workers-per-trial", type=int, help="DDP workers per trial (overrides the profile)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial can be stopped (overrides the profile)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--max-concurrent", type=int, help="cap on concurrent trials (default: what the cluster fits)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="times a trial that lost a worker process or node (kill -9, OOM killer, a reclaimed spot "
                        "node) resumes from its latest checkpoint before it counts as failed (default 2; warm pools "
                        "only: with --no-pool it fails). A trial whose own code raises fails at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--searcher", choices=["tpe", "random"], default="tpe",
                   help="Optuna sampler: multivariate TPE (default) or random search (a baseline)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="early stopping: ASHA on epochs (default) or none (every trial runs --max-epochs)")
    p.add_argument("--budget-epochs", type=int,
                   help="end the search once its trials together have run this many epochs")
    p.add_argument("--no-pool", dest="pool", action="store_false",
                   help="start a fresh Ray Train run (TorchTrainer) for every trial instead of running trials "
                        "on warm worker pools: full process isolation, ~15 s more per trial")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (same --out and --name)")
    p.add_argument("--address", help="connect to an existing Ray cluster (e.g. auto)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", default=None,
                   help="start the local Ray without its dashboard")
    p.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                   help="default: online with credentials, else offline")
    p.add_argument("--wandb-project", default="dfsearch")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    p.add_argument("--verbose", action="store_true",
                   help="show everything on the terminal: Tune's status tables, every Ray worker's output, W&B's "
                        "and Optuna's notices (by default they go to RUN_DIR/search.log only, and the terminal "
                        "shows dfsearch's own lines, a line per ended trial and a progress bar)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_search.py", description="Ray Tune + Optuna (TPE) + ASHA search over "
                                "architectures and hyperparameters; each trial a Ray Train DDP job.")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from dfsearch.commands import command_line

    args = build_parser().parse_args(argv)
    args.command_line = command_line("python run_search.py", argv)
    return run(args)


def run(args) -> int:
    for flag in ("num_samples", "max_epochs", "workers_per_trial", "max_concurrent", "budget_epochs", "grace_period"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            print(f"run_search.py: error: --{flag.replace('_', '-')} {v}: need >= 1", file=sys.stderr)
            return 2
    if args.max_failures < 0:
        print(f"run_search.py: error: --max-failures {args.max_failures}: need >= 0 (0: a lost worker fails its trial)",
              file=sys.stderr)
        return 2
    return run_command("run_search.py", _search, args,
                       interrupted="interrupted; continue with the same --out/--name and --resume")


def _search(args) -> int:
    from dfsearch.search import run as search

    if args.json:  # stdout is the one JSON report: Tune's tables and the workers' output go to stderr
        real = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return search(args, report_to=real)
    return search(args)
