"""The commands that produced a run, one JSON line each in ``<run>/commands.jsonl``.

``record`` is called by the commands that make a run (the search, ``ensemble.py``, ``dfsearch
train``) with ``typed(args, prog)``; ``read`` gives them back, oldest first, for ``dfsearch report``.
A line: ``{"time": ISO-8601, "cwd": ..., "command": "python run_search.py --space demo", "argv": [...]}``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

FILE = "commands.jsonl"


def command_line(prog: str, argv: list[str] | None) -> list[str]:
    """What the user typed: ``prog`` (e.g. ``python run_search.py``, ``dfsearch``) and the
    arguments a ``main(argv)`` was given (``None``: this process's ``sys.argv[1:]``)."""
    return [*shlex.split(prog), *(sys.argv[1:] if argv is None else [str(a) for a in argv])]


def typed(args, prog: str) -> list[str]:
    """The command line the entry point saw (``args.command_line``, set by each ``main``), or,
    for a caller that built ``args`` itself, ``prog`` with this process's arguments."""
    return getattr(args, "command_line", None) or command_line(prog, None)


def record(run_dir: str | os.PathLike, argv: list[str]) -> None:
    """Append the command ``argv`` (``command_line``'s list) to ``run_dir``'s log; never fails
    the command over it (a read-only folder keeps no log)."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(), "command": shlex.join(argv),
             "argv": list(argv)}
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as e:
        print(f"dfsearch: could not record the command in {run_dir}/{FILE}: {e}", file=sys.stderr)


def read(run_dir: str | os.PathLike) -> list[dict]:
    """The recorded commands, oldest first; [] when none were (runs made before this log existed)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the others still count
            continue
    return out
