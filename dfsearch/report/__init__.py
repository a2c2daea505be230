"""``dfsearch report``: one self-contained HTML page about a run.

``render(run_dir) -> str`` is the page; ``write_report(run_dir, out=None) -> Path`` writes it
(default ``<run>/report.html``). The page has four sections with stable anchors, each built by
its own module from the files the run left, and each saying what it lacks instead of failing:

``#data`` (``data``)          counts per split and class, imbalance, generator families, image
                              sizes, a sample grid and pixel histograms of the dataset in ``search.json``
``#search`` (``search``)      leaderboard, ASHA's stops, per-trial curves, the Optuna study's plots
``#ensemble`` (``ensemble``)  members and weights, test with intervals, gain over the best single,
                              per generator family, ROC / PR / confusion / reliability
``#commands`` (``commands``)  the command lines that produced the run (``dfsearch.commands``)

Images are embedded as base64 PNG and nothing is fetched: the file opens offline (``html``).
The report only reads the run folder; it records no command there.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dfsearch.report.folder import RunFolder, open_run

SECTIONS = ("data", "search", "ensemble", "commands")
REPORT_FILE = "report.html"


@dataclass
class Report:
    """A rendered page: the run it describes, its sections (ids, what each lacks) and the HTML."""

    run: RunFolder
    sections: list
    html: str


def build(run_dir: str | os.PathLike | RunFolder, progress: bool = False) -> Report:
    """Check ``run_dir`` (DfsearchError if it is not a run folder), then build every section."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go into the page
    from tqdm import tqdm

    from dfsearch import __version__
    from dfsearch.report import commands, data, ensemble, html, search
    from dfsearch.report.folder import dataset_path

    run = run_dir if isinstance(run_dir, RunFolder) else open_run(run_dir)
    builders = {"data": lambda: data.section(*dataset_path(run)), "search": lambda: search.section(run),
                "ensemble": lambda: ensemble.section(run), "commands": lambda: commands.section(run)}
    bar = tqdm(SECTIONS, desc="report", unit="section", file=sys.stderr, disable=None if progress else True)
    sections = []
    for key in bar:
        bar.set_postfix_str(key)
        sections.append(builders[key]())
    subtitle = (f"Run folder {html.code(run.path)} ({'a search' if run.kind == 'search' else 'a dfsearch train run'})"
                f"; report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by dfsearch {__version__}.")
    page = html.page(f"dfsearch report: {run.name}", subtitle, sections)
    return Report(run, sections, page)


def render(run_dir: str | os.PathLike) -> str:
    """The self-contained HTML page of the run in ``run_dir``."""
    return build(run_dir).html


def save(report: Report, out: str | os.PathLike | None = None) -> Path:
    """Write ``report`` to ``out`` (default ``<run>/report.html``) atomically; its path."""
    path = Path(out) if out else report.run.path / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(report.html, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Render the run in ``run_dir`` and write the page to ``out`` (default ``<run>/report.html``)."""
    return save(build(run_dir, progress=progress), out)
