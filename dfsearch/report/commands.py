"""The report's commands section: the exact command lines that produced the run.

They are the ones the commands recorded in ``<run>/commands.jsonl`` (``dfsearch.commands``). A
step the log lacks (the run, or its search, began before the log existed) is shown as an
equivalent command rebuilt from what the run saved (``search.json``: the spec with the profile's
budgets written out; ``ensemble.json``: the selection's settings), marked as rebuilt.
"""

from __future__ import annotations

import json
import os
import shlex

import pandas as pd

from dfsearch import commands
from dfsearch.report import html as H
from dfsearch.report.folder import ENSEMBLE_FILE, RunFolder

# search.json key -> run_search.py flag (the flags that change what the search does)
SEARCH_FLAGS = {"space": "--space", "data": "--data", "profile": "--profile", "num_samples": "--num-samples",
                "max_epochs": "--max-epochs", "workers_per_trial": "--workers-per-trial",
                "grace_period": "--grace-period", "seed": "--seed", "searcher": "--searcher",
                "scheduler": "--scheduler", "budget_epochs": "--budget-epochs"}


def section(run: RunFolder) -> H.Section:
    """The ``#commands`` section of ``run``."""
    recorded = commands.read(run.path)
    body, missing = [], []
    if recorded:
        table = pd.DataFrame([{"time": c.get("time", ""), "cwd": c.get("cwd", ""), "command": c.get("command", "")}
                              for c in recorded])
        body += [H.p(f"Recorded in {H.code(commands.FILE)}, oldest first:"), H.table(table, id="recorded-commands"),
                 H.pre("\n".join(c.get("command", "") for c in recorded))]
    else:
        missing.append("recorded commands")
        body.append(H.note(f"No commands recorded ({commands.FILE} is not in the run folder: the run predates it)."))
    # a step the log does not have (a run begun before the log existed): what the run saved tells it
    lacking = {step: line for step, line in rebuild(run).items()
               if not any(_step(c.get("argv") or shlex.split(c.get("command", ""))) == step for c in recorded)}
    if lacking:
        if recorded:
            missing.append("recorded " + " and ".join(lacking) + " command")
        body += [H.p(f"Not recorded: the {' and '.join(lacking)} command. Equivalent command(s) rebuilt from what "
                     f"the run saved (not necessarily the lines typed):"),
                 f'<div id="rebuilt-commands">{H.pre(chr(10).join(lacking.values()))}</div>']
    body += [H.p("This page:"), H.pre(shlex.join(["dfsearch", "report", str(run.path)]))]
    return H.Section("commands", "Commands", "\n".join(body), missing)


def _step(argv: list[str]) -> str | None:
    """Which step of a run a command line is: ``search``, ``ensemble`` or None."""
    words = [os.path.basename(a) for a in argv[:3]]
    if "run_search.py" in words or words[:2] == ["dfsearch", "search"]:
        return "search"
    if "ensemble.py" in words or words[:2] == ["dfsearch", "ensemble"]:
        return "ensemble"
    return None


def rebuild(run: RunFolder) -> dict[str, str]:
    """``{"search": line, "ensemble": line}``: command lines equivalent to the run's, from
    ``search.json`` and ``ensemble.json`` (a step whose file is absent is left out)."""
    out = {}
    spec = run.spec
    if spec:
        argv = ["python", "run_search.py", "--out", str(run.path.parent), "--name", spec.get("name", run.path.name)]
        for key, flag in SEARCH_FLAGS.items():
            if spec.get(key) is not None:
                argv += [flag, str(spec[key])]
        if spec.get("pool") is False:
            argv.append("--no-pool")
        out["search"] = shlex.join(argv)
    path = run.path / ENSEMBLE_FILE
    if path.is_file():
        doc = json.loads(path.read_text())
        argv = ["python", "ensemble.py", "--run", str(run.path), "--top-k", str(doc["top_k"]),
                "--metric", str(doc["metric"]), "--rounds", str(doc["rounds"])]
        if doc.get("nbest") is not None:
            argv += ["--nbest", str(doc["nbest"])]
        if (doc.get("calibration") or {}).get("target_fpr") is not None:
            argv += ["--target-fpr", str(doc["calibration"]["target_fpr"])]
        if doc.get("chance_z", 0) is None:
            argv.append("--keep-chance-level")
        if doc.get("candidate_calibration") is None:
            argv.append("--raw-candidates")
        out["ensemble"] = shlex.join(argv)
    return out
