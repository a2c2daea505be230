"""What a search shows on the terminal, and the log file that keeps everything else.

A search's process prints a lot that is not for its user: Tune's status tables every 30 s, every
Ray worker's forwarded output (``(RayTrainWorker pid=...)``), Optuna's and W&B's notices. While a
``Console`` is active, ``sys.stdout`` / ``sys.stderr`` write into ``<run>/search.log`` and only
dfsearch's own lines (``dfsearch: ...``, ``W&B: ...``) and what is ``say``-ed reach the terminal,
under one live progress view (``SearchProgress``). ``--verbose`` shows everything as before;
the log file is written either way.

Python-level streams only (no ``dup2`` of the process's file descriptors): Ray forwards worker
output through ``sys.stdout`` / ``sys.stderr`` looked up at each write, and Python's logging
handlers are pointed at the log while the console is active, so nothing of Ray's private
machinery is touched, and a test's captured streams keep working.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
from pathlib import Path

LOG_FILE = "search.log"
HEARTBEAT_S = 60.0  # without a terminal (CI logs, nohup): a status line at most this often between trial ends
SHOWN_PREFIXES = ("dfsearch:", "W&B:", "run_search.py:")  # our own notices: on the terminal even when quiet

_ACTIVE: "Console | None" = None
_RAY_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)*\([^)]*pid=[^)]*\)(?:\x1b\[[0-9;]*m)*\s*")  # "(trial_fn pid=1) "
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee(io.TextIOBase):
    """A text stream that writes every line to the log and, when ``show(line)``, to the terminal."""

    def __init__(self, log, term, show, lock):
        self._log, self._term, self._show = log, term, show
        self._bufs: dict[int, str] = {}  # per thread: print() writes a line and its "\n" in two calls
        self._shown = False  # the last complete line went to the terminal (its continuation lines follow it)
        # one re-entrant lock for both streams and ``say``: they share the log file, and a signal
        # handler that prints (StopOnSignal) may run while this thread is inside a write
        self._lock = lock

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # Tune and tqdm draw for a terminal only where one is shown everything
        return self._show is _ALL and self._term.isatty()

    def write(self, s: str) -> int:
        with self._lock:
            if self._log is None:  # the console has ended: a late writer (a Ray thread) reaches the terminal
                return self._term.write(s)
            me = threading.get_ident()
            *lines, self._bufs[me] = (self._bufs.get(me, "") + s).split("\n")
            for line in lines:  # whole lines only: the log is shared by threads and by both streams
                self._log.write(line + "\n")
                shown = self._show(line, self._shown)
                if shown is not None:
                    _to_terminal(self._term, shown)
                self._shown = shown is not None
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.flush()
            self._term.flush()

    def detach_log(self) -> None:
        with self._lock:
            for rest in filter(None, self._bufs.values()):
                self._log.write(rest + "\n")
                if (shown := self._show(rest, self._shown)) is not None:
                    _to_terminal(self._term, shown)
            self._log, self._bufs = None, {}


def _ALL(line: str, after_shown: bool) -> str:
    return line


def _ours(line: str, after_shown: bool) -> str | None:
    """The line as the terminal shows it, or None: dfsearch's own lines, also when a Ray worker
    printed them (``(trial_fn pid=1) dfsearch: ...``, colour codes dropped), and the indented
    continuation lines of one that was shown (a traceback, a multi-line message)."""
    plain = _ANSI.sub("", _RAY_PREFIX.sub("", line))
    if plain.startswith(SHOWN_PREFIXES):
        return plain
    if after_shown and line[:1] in (" ", "\t") and not _RAY_PREFIX.match(line):
        return line
    return None


def _to_terminal(term, text: str) -> None:
    """A line above the live progress bar (tqdm redraws it below)."""
    from tqdm import tqdm

    tqdm.write(text, file=term)


class Console:
    """``with Console(run_dir, verbose):`` the search's terminal and its ``search.log``.

    Quiet (default): the terminal shows dfsearch's own lines, one line per ended trial and the
    progress bar; everything the process prints goes to the log. ``verbose``: the terminal shows
    everything too (and no bar, which the workers' lines would tear)."""

    def __init__(self, run_dir: str | Path, verbose: bool = False):
        self.path = Path(run_dir) / LOG_FILE
        self.verbose = verbose
        self.progress: SearchProgress | None = None

    def __enter__(self) -> "Console":
        global _ACTIVE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.path, "a", buffering=1)
        self._log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        self.out, self.err = sys.stdout, sys.stderr  # the terminal (or a test's captured streams)
        show = _ALL if self.verbose else _ours
        self._lock = threading.RLock()
        sys.stdout, sys.stderr = (_Tee(self._log, self.out, show, self._lock),
                                  _Tee(self._log, self.err, show, self._lock))
        self._tees = {sys.stdout: self.out, sys.stderr: self.err}
        _point_handlers({self.out: sys.stdout, self.err: sys.stderr})
        _ACTIVE = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        if self.progress is not None:
            self.progress.close()
        _ACTIVE = None
        sys.stdout, sys.stderr = self.out, self.err
        # the handlers pointed at the tees: ours, and those made while the console was on (Optuna's)
        _point_handlers(self._tees)
        for tee in self._tees:
            tee.detach_log()
        with self._lock:
            self._log.close()

    def say(self, text: str, err: bool = False) -> None:
        """``text`` on the terminal (stdout, or stderr) and in the log."""
        self.log(text)
        with self._lock:
            _to_terminal(self.err if err else self.out, text)

    def log(self, text: str) -> None:
        """``text`` in the log only."""
        with self._lock:
            if not self._log.closed:
                self._log.write(text + "\n")

    def start_progress(self, **kw) -> "SearchProgress":
        self.progress = SearchProgress(term=self.err, bar=not self.verbose and self.err.isatty(), log=self.log, **kw)
        return self.progress


def say(text: str, err: bool = False) -> None:
    """Print ``text`` for the user: through the active console (terminal + log), else plainly."""
    if _ACTIVE is not None:
        _ACTIVE.say(text, err)
    else:
        print(text, file=sys.stderr if err else sys.stdout)


def _point_handlers(streams: dict) -> None:
    """Every logging handler that writes to a key of ``streams`` writes to its value instead."""
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    for logger in loggers:
        for h in logger.handlers:
            if type(h) is logging.StreamHandler and h.stream in streams:
                h.setStream(streams[h.stream])


class SearchProgress:
    """The live view of a search: trials ended / running / planned, epochs used of the budget,
    the best value of the search metric so far (trial, arch), elapsed and estimated time left, and
    a line per ended trial. Fed by a Tune callback (``callbacks.ShowProgress``) in the driver.

    The time left is a rate estimate: epochs still expected (unstarted trials x the mean epochs of
    the ended ones, ``max_epochs`` before any ended, plus what running ones have left of that, or of
    ``max_epochs`` for one already past it) over the epochs per second so far. ASHA makes it rough early on; it is shown as ``~``."""

    def __init__(self, *, planned: int, max_epochs: int, metric: str, mode: str, budget_epochs: int | None = None,
                 ended: list[dict] | None = None, term=None, bar: bool = False, log=None):
        self.planned, self.max_epochs, self.metric, self.mode = planned, max_epochs, metric, mode
        self.budget = budget_epochs
        self.term = term if term is not None else sys.stderr
        self.log = log or (lambda text: None)  # the per-trial lines go to the log file too
        self.t0 = time.time()
        self.running: dict[str, dict] = {}  # trial -> {"arch", "epoch"}
        self.ended_epochs: list[int] = []  # one entry per ended trial: its epochs
        self.epochs_before = 0  # epochs of trials that ended in an earlier run (--resume): not in the rate
        self.epochs_now = 0
        self.best: tuple[float, str, str] | None = None  # (value, trial, arch)
        for e in ended or []:  # what an interrupted run had ended already
            self.ended_epochs.append(int(e.get("epoch") or 0))
            self.epochs_before += int(e.get("epoch") or 0)
            self._consider(e.get(metric), e.get("trial_id", "?"), e.get("arch", "?"))
        self._bar = None
        self._said_at = time.time()
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=planned, initial=self.ended, unit="trial", file=self.term, dynamic_ncols=True,
                             bar_format="{l_bar}{bar:12}| {n_fmt}/{total_fmt} trials [{elapsed}{postfix}]")
            self._refresh()

    # -- fed by the callback -------------------------------------------------------------------
    def started(self, trial: str, arch: str) -> None:
        self.running.setdefault(trial, {"arch": arch, "epoch": 0})
        self._refresh()

    def result(self, trial: str, arch: str, epoch: int, value) -> None:
        run = self.running.setdefault(trial, {"arch": arch, "epoch": 0})
        if epoch > run["epoch"]:
            self.epochs_now += epoch - run["epoch"]
            run["epoch"] = epoch
        self._consider(value, trial, arch)
        self._refresh()
        if self._bar is None and time.time() - self._said_at >= HEARTBEAT_S:
            self._said_at = time.time()
            self.log(f"... {self.status()}")
            print(f"... {self.status()}", file=self.term, flush=True)

    def trial_ended(self, trial: str, arch: str, how: str, epoch: int | None, value, note: str = "") -> None:
        run = self.running.pop(trial, {"epoch": 0})
        epoch = int(epoch or run["epoch"] or 0)
        self.ended_epochs.append(epoch)
        self._consider(value, trial, arch)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else "no result"
        line = (f"[{self.ended}/{self.planned}] {trial} {arch}: {how} after {epoch} epoch(s), {shown}"
                + (f"; {note}" if note else "") + f" | {self.status()}")
        self.log(line)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.write(line, file=self.term)
            self._refresh()
        else:
            self._said_at = time.time()
            print(line, file=self.term, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- pure views ----------------------------------------------------------------------------
    @property
    def ended(self) -> int:
        return len(self.ended_epochs)

    def epochs_used(self) -> int:
        return self.epochs_before + self.epochs_now

    def epochs_planned(self) -> int:
        """The most epochs the search can run: the budget, or every trial to ``max_epochs``."""
        full = self.planned * self.max_epochs
        return min(full, self.budget) if self.budget else full

    def eta_s(self) -> float | None:
        """Seconds left by the rate so far; None before the first epoch of this run."""
        elapsed = time.time() - self.t0
        if self.epochs_now == 0 or elapsed <= 0:
            return None
        per_trial = (sum(self.ended_epochs) / len(self.ended_epochs)) if self.ended_epochs else self.max_epochs
        unstarted = max(0, self.planned - self.ended - len(self.running))
        # a running trial past the mean has survived ASHA's rungs so far: expect it to run to the end
        left = unstarted * per_trial + sum((per_trial if r["epoch"] < per_trial else self.max_epochs) - r["epoch"]
                                           for r in self.running.values())
        left = min(left, max(0, self.epochs_planned() - self.epochs_used()))
        return left / (self.epochs_now / elapsed)

    def best_text(self) -> str:
        if self.best is None:
            return f"best {self.metric}: -"
        value, trial, arch = self.best
        return f"best {self.metric} {value:.4f} ({trial} {arch})"

    def status(self) -> str:
        eta = self.eta_s()
        return (f"{self.ended}/{self.planned} ended, {len(self.running)} running | epochs "
                f"{self.epochs_used()}/{self.epochs_planned()} | {self.best_text()} | "
                f"{_minutes(time.time() - self.t0)} elapsed" + (f", ~{_minutes(eta)} left" if eta is not None else ""))

    def _consider(self, value, trial: str, arch: str) -> None:
        if not isinstance(value, (int, float)) or value != value:  # None, NaN
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (float(value), trial, arch)

    def _refresh(self) -> None:
        if self._bar is not None:
            eta = self.eta_s()
            self._bar.set_postfix_str(f"{len(self.running)} running | epochs {self.epochs_used()}/"
                                      f"{self.epochs_planned()} | {self.best_text()}"
                                      + (f" | ~{_minutes(eta)} left" if eta is not None else ""), refresh=True)


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
