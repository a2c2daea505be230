"""Where a search lives: ``<out>/<name>/``, or with a URI ``--out`` a local staging copy kept in
step with ``<uri>/<name>/`` (``dfsearch.remote``). ``open_run_folder`` checks what ``--resume``
and ``--name`` imply (a search to continue exists; a new one does not clobber one) and, for a
resume from a URI, fetches what the bucket holds. Everything here is cheap: it runs before Ray."""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dfsearch import remote
from dfsearch.errors import DfsearchError

STATE_FILE = "tuner.pkl"  # Tune's experiment state: a search that started has it


@dataclass
class RunFolder:
    out: Path          # the local parent of run_dir
    run_dir: Path      # where the search writes
    name: str
    out_flag: str      # --out as given (for the resume command)
    target: remote.Remote | None = None  # a URI --out: the run folder there

    @property
    def where(self) -> str:
        return self.target.uri if self.target else str(self.out)

    def resume_command(self) -> str:
        return f"python run_search.py --resume --out {shlex.quote(str(self.out_flag))} --name {shlex.quote(self.name)}"


def open_run_folder(out: str, name: str, resume: bool) -> RunFolder:
    if remote.is_uri(out):
        folder = _staged(out, name, resume)
    else:
        root = Path(out).expanduser().resolve()
        folder = RunFolder(root, root / name, name, out)
    started = (folder.run_dir / STATE_FILE).exists()
    if resume and not started:
        prev = [] if folder.target else sorted(p.parent.name for p in folder.out.glob(f"*/{STATE_FILE}"))
        raise DfsearchError(f"--resume: no previous search named {name!r} under {folder.where}"
                            + (f"; found: {', '.join(prev)}" if prev
                               else " (pass the same --out and --name as the interrupted run)"))
    if not resume and started:  # (with a URI: staged here, and its copy there never made it)
        copy = f"(and copy it to {folder.target.uri}) " if folder.target else ""
        raise DfsearchError(f"a search named {name!r} already exists in {folder.out}; use --resume to continue it "
                            f"{copy}or another --name")
    return folder


def _staged(out: str, name: str, resume: bool) -> RunFolder:
    target = remote.open_uri(out).child(name)
    remote.check_writable(target)
    run_dir = remote.staging_dir(target.uri)
    folder = RunFolder(run_dir.parent, run_dir, name, out, target)
    if resume:
        if not (run_dir / STATE_FILE).exists() and target.exists(STATE_FILE):
            print(f"dfsearch: fetching {target.uri} into {run_dir}", file=sys.stderr)
            remote.fetch(target, run_dir, "--out", exclude=("pools",))
        elif (run_dir / STATE_FILE).exists():  # trials that other nodes trained since this copy was made
            remote.fetch(target.child("train"), run_dir / "train", "--out")
    elif target.exists(STATE_FILE):
        raise DfsearchError(f"a search named {name!r} already exists at {target.uri}; use --resume to "
                            f"continue it or another --name")
    elif run_dir.exists() and not (run_dir / STATE_FILE).exists():  # a search that never started
        shutil.rmtree(run_dir)
    return folder
