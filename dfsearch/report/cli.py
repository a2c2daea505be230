"""``dfsearch report [RUN] [--out FILE.html] [--json]``: write the run's HTML page and say where.

RUN is a run folder (default: the latest ``runs/*/`` holding a ``predictions.parquet``, as for
``ensemble.py``) or its URI (``s3://...``: fetched into the local staging copy, without the
checkpoints, and the page written there unless ``--out``). A folder that is not a run is refused
before matplotlib, pandas or torch load. The last line is a human summary (path, size, sections
and what each lacks); ``--json`` prints one JSON object instead: ``{"path", "bytes", "sections":
{id: {"status", "missing"}}}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dfsearch import remote
from dfsearch.errors import DfsearchError
from dfsearch.report.folder import EXPECTED, MARKERS, open_run

NOT_FETCHED = ("pools", "train", "wandb")  # checkpoints and W&B logs: the page needs none of them


def run(args) -> int:
    """CLI entry: ``args.run`` (folder, URI or None), ``args.out`` (file or None), ``args.json``."""
    if args.out and Path(args.out).is_dir():
        raise DfsearchError(f"--out {args.out} is a folder; give the HTML file to write (e.g. {args.out}/report.html)")
    if args.run and remote.is_uri(args.run):
        run_dir = _fetch(args.run)
    elif args.run:
        run_dir = args.run
    else:
        from dfsearch.ensemble_cli import latest_run

        run_dir = latest_run()
        print(f"dfsearch report: using the latest run {Path(run_dir).resolve()} (pass RUN to choose)", file=sys.stderr)
    folder = open_run(run_dir)  # not a run: refused here, before anything heavy is imported

    from dfsearch.report import build, save

    report = build(folder, progress=not args.json)
    path = save(report, args.out)
    size = path.stat().st_size
    sections = {s.id: {"status": s.status, "missing": s.missing} for s in report.sections}
    if args.json:
        print(json.dumps({"path": str(path), "bytes": size, "sections": sections}))
        return 0
    parts = [s.id + (f" (lacks: {', '.join(s.missing)})" if s.missing else "") for s in report.sections]
    print(f"wrote {path} ({size / 1e6:.2f} MB): sections {', '.join(parts)}; open it in any browser (offline)")
    return 0


def _fetch(uri: str) -> Path:
    target = remote.open_uri(uri, "RUN")
    if not any(target.exists(m) for m in MARKERS):
        raise DfsearchError(f"RUN {uri}: not a run folder, none of {', '.join(MARKERS)} there; {EXPECTED}")
    local = remote.staging_dir(target.uri)
    print(f"dfsearch report: fetching {target.uri} into {local} (without {', '.join(NOT_FETCHED)})", file=sys.stderr)
    remote.fetch(target, local, "RUN", exclude=NOT_FETCHED)
    return local
