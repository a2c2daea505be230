"""What a run folder is, checked before anything heavy is imported, and where its pieces are.

A run folder is what ``python run_search.py`` writes (``<out>/<name>/``: ``search.json``,
``trials.parquet``, ``predictions.parquet``, ``optuna.db``, ``train/``, and after ``ensemble.py``,
``ensemble/ensemble.json``) or what ``dfsearch train --out DIR`` writes (``predictions.parquet``,
``candidates.parquet``, one ``<name>.json`` summary per trial). ``open_run`` accepts either and
refuses anything else with a message that says what it expected. Standard library only: bad input
is answered in milliseconds, before numpy, pandas or torch load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dfsearch.errors import DfsearchError

SPEC_FILE = "search.json"  # = dfsearch.search.spec.SPEC_FILE (pydantic there: not imported for a path)
TRIALS_FILE = "trials.parquet"  # = dfsearch.search.results.TRIALS_FILE (pandas there)
PREDICTIONS_FILE = "predictions.parquet"  # = dfsearch.store.PREDICTIONS_FILE (pyarrow there)
CANDIDATES_FILE = "candidates.parquet"
STUDY_FILE = "optuna.db"  # = dfsearch.search.searcher.STUDY_FILE
ENSEMBLE_FILE = Path("ensemble") / "ensemble.json"
MARKERS = (SPEC_FILE, TRIALS_FILE, PREDICTIONS_FILE)

EXPECTED = (f"a run folder holds {SPEC_FILE} + {TRIALS_FILE} + {PREDICTIONS_FILE} (what `python run_search.py` "
            f"writes as runs/<name>/, e.g. runs/search-YYYYMMDD-HHMMSS) or {PREDICTIONS_FILE} + {CANDIDATES_FILE} "
            f"(what `dfsearch train --out DIR` writes)")


@dataclass(frozen=True)
class RunFolder:
    """A checked run folder. ``kind``: ``"search"`` (a search's run folder) or ``"train"`` (a
    ``dfsearch train`` output: one or a few trials, no study); ``spec``: ``search.json`` as a dict
    ({} for a train run)."""

    path: Path
    kind: str
    spec: dict

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.path.name

    def has(self, rel: str | Path) -> bool:
        return (self.path / rel).is_file()


def open_run(path: str | os.PathLike) -> RunFolder:
    """The run folder at ``path``, or DfsearchError naming the folder and what a run folder holds."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DfsearchError(f"{p}: no such folder; {EXPECTED}")
    if not p.is_dir():
        raise DfsearchError(f"{p} is a file, not a run folder; {EXPECTED}")
    p = p.resolve()
    present = [m for m in MARKERS if (p / m).is_file()]
    if not present:
        hint = _runs_below(p)
        raise DfsearchError(f"{p} is not a run folder: it holds none of {', '.join(MARKERS)}; {EXPECTED}"
                            + (f". Run folders below it: {', '.join(hint)}" if hint else ""))
    if (p / SPEC_FILE).is_file() or (p / TRIALS_FILE).is_file():
        spec = {}
        if (p / SPEC_FILE).is_file():
            try:
                spec = json.loads((p / SPEC_FILE).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DfsearchError(f"{p / SPEC_FILE}: not readable JSON ({e}); it is the search's spec, "
                                    f"written by `python run_search.py`") from None
            if not isinstance(spec, dict):
                raise DfsearchError(f"{p / SPEC_FILE}: expected a JSON object (the search's spec)")
            spec = {**spec.pop("args", {}), **spec}  # searches before 0.1.1 nested the budgets under "args"
        return RunFolder(p, "search", spec)
    return RunFolder(p, "train", {})


def _runs_below(p: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` run folders right below ``p`` (the user gave ``runs/``), newest first."""
    try:
        found = [d for d in p.iterdir() if d.is_dir() and any((d / m).is_file() for m in MARKERS)]
    except OSError:
        return []
    found.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [str(d) for d in found[:limit]]


def dataset_path(run: RunFolder) -> tuple[str | None, str]:
    """``(the dataset folder the run trained on, where that was read)``; None when no file says.

    A search records it in ``search.json`` (``data``); every checkpoint records it too
    (``config.json``: ``data_root``), which is where a ``dfsearch train`` run keeps it."""
    if run.spec.get("data"):
        return str(run.spec["data"]), SPEC_FILE
    # a search's train/<trial>/checkpoint_*; Ray Train's <name>/checkpoint_* (or one level deeper)
    for cfg in [*sorted(run.path.glob("*/checkpoint_*/config.json")),
                *sorted(run.path.glob("*/*/checkpoint_*/config.json"))]:
        try:
            root = json.loads(cfg.read_text()).get("data_root")
        except (OSError, json.JSONDecodeError):
            continue
        if root:
            return str(root), str(cfg.relative_to(run.path))
    return None, f"neither {SPEC_FILE} nor a checkpoint's config.json"
