"""Run folders at a URI (``--out s3://bucket/prefix``, ``gs://``, ``hdfs://``, ``file://`` ...): a local
staging copy kept in step with the URI through ``pyarrow.fs``.

A search with a URI ``--out`` runs in a local staging folder (``staging_dir``) exactly as it does
with a local ``--out`` (sqlite study, checkpoints pruned in place), and copies what it writes to
``<uri>/<name>/``:

* the search driver pushes its own files (Tune's state, the Optuna study, tables, W&B offline
  runs) when a trial ends, at most every ``PUSH_EVERY_S`` otherwise, and all of it at the end;
* on a warm pool, rank 0 pushes its trial's folder (checkpoints, ``final.json``) after every
  epoch, so workers on other nodes need no filesystem shared with the driver;
* ``--resume``, ``ensemble.py --run URI`` and a pool taking over a trial pull what they lack.

Files are written whole and never edited in place (checkpoints are renamed into place, tables
rewritten), so comparing size and modification time tells what to copy. Contract of ``push``:
afterwards every local file exists at the remote with its size; with ``delete``, remote files under
the folder that are not local are gone. ``pull`` is the mirror image, without deleting.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dfsearch.errors import DfsearchError

PUSH_EVERY_S = 10.0  # the driver's state (Tune saves it every 2 s here); and whenever a trial ends
SCHEMES = "s3://, gs://, hdfs://, abfs://, file:// (what pyarrow.fs.FileSystem.from_uri opens)"
_SCRATCH = (".partial", ".dfsearch-", ".tmp")  # half-written things that are never copied
_PUSHED: dict[tuple[str, str], tuple[int, float]] = {}  # (uri, remote file) -> local (size, mtime) copied there


def is_uri(s) -> bool:
    return "://" in str(s)


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/runs?endpoint_override=h:9", "x")`` -> ``"s3://b/runs/x?endpoint_override=h:9"``."""
    base, sep, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def split(uri: str) -> tuple[str, str]:
    """``split("s3://b/runs/x?endpoint_override=h:9")`` -> ``("s3://b/runs?endpoint_override=h:9", "x")``:
    the parent folder's URI (query kept, as ``join`` keeps it) and the last part."""
    base, sep, query = uri.partition("?")
    parent, _, last = base.rstrip("/").rpartition("/")
    return parent + sep + query, last


@dataclass(frozen=True)
class Remote:
    """A folder at a URI: the URI as given (for messages and for other processes), its pyarrow
    filesystem and the folder's path in it."""
    uri: str
    fs: object
    path: str

    def child(self, *parts: str) -> "Remote":
        return Remote(join(self.uri, *parts), self.fs, "/".join([self.path.rstrip("/"), *parts]))

    def exists(self, rel: str = "") -> bool:
        from pyarrow.fs import FileType

        p = f"{self.path}/{rel}" if rel else self.path
        return self.fs.get_file_info(p).type != FileType.NotFound


def open_uri(uri: str, flag: str = "--out") -> Remote:
    """The folder at ``uri``; DfsearchError naming the flag, the URI and what is accepted if pyarrow
    cannot open it (an unknown scheme; for S3, a bucket whose region cannot be found)."""
    try:
        return _open(uri)
    except Exception as e:
        raise DfsearchError(f"{flag} {uri}: cannot open this URI ({_first_line(e)}); accepted: {SCHEMES}, "
                            f"or a local path") from None


@functools.lru_cache(maxsize=32)
def _open(uri: str) -> Remote:
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    return Remote(uri, filesystem, path.rstrip("/"))


def check_writable(remote: Remote) -> None:
    """Write and delete a small file under ``remote``: bad credentials, a missing bucket or a
    read-only location fail here, before any training, with the URI in the message."""
    probe = f"{remote.path}/.dfsearch-write-probe-{os.getpid()}"
    try:
        _make_parent(remote.fs, probe)
        with remote.fs.open_output_stream(probe) as f:
            f.write(b"dfsearch")
        remote.fs.delete_file(probe)
    except Exception as e:
        raise DfsearchError(f"--out {remote.uri}: cannot write there ({_first_line(e)}); check the bucket, "
                            f"the path and the "
                            f"credentials (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance "
                            f"role; an S3-compatible server: ?endpoint_override=HOST:PORT&scheme=http)") from None


def staging_dir(uri: str) -> Path:
    """The local folder a remote run folder is staged in: ``$DFSEARCH_CACHE/runs/<hash>/<name>``
    (default ``~/.cache/dfsearch``), the same for the same URI; ``<name>`` is the URI's last part."""
    from dfsearch.paths import staging_root

    key = hashlib.sha1(uri.encode()).hexdigest()[:12]
    name = uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1] or "run"
    return staging_root() / key / name


# ----------------------------------------------------------------------------- listing

def _skipped(rel: str, exclude) -> bool:
    parts = rel.split("/")
    return parts[0] in exclude or any(p.startswith(_SCRATCH) or p.endswith(".tmp") for p in parts)


def _local_files(local: Path, exclude) -> dict[str, tuple[int, float]]:
    out = {}
    for root, dirs, files in os.walk(local):
        for f in files:
            p = Path(root) / f
            rel = p.relative_to(local).as_posix()
            if _skipped(rel, exclude):
                continue
            try:
                st = p.stat()
            except OSError:  # deleted while we looked (a pruned checkpoint)
                continue
            out[rel] = (st.st_size, st.st_mtime)
    return out


def _remote_entries(remote: Remote, exclude) -> tuple[dict[str, tuple[int, float]], set[str]]:
    """(files: rel -> (size, mtime), directories) under ``remote``; empty if it does not exist."""
    from pyarrow.fs import FileSelector, FileType

    files, dirs = {}, set()
    for info in remote.fs.get_file_info(FileSelector(remote.path, recursive=True, allow_not_found=True)):
        rel = info.path[len(remote.path):].lstrip("/")
        if not rel or _skipped(rel, exclude):
            continue
        if info.type == FileType.File:
            files[rel] = (info.size, info.mtime.timestamp() if info.mtime else 0.0)
        elif info.type == FileType.Directory:
            dirs.add(rel)
    return files, dirs


def _make_parent(filesystem, path: str) -> None:
    if filesystem.type_name == "local":  # object stores have no folders to make
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)


# ----------------------------------------------------------------------------- copying

def push(local: Path, remote: Remote, *, delete: bool = False, exclude: tuple[str, ...] = ()) -> int:
    """Copy ``local``'s files that are missing at ``remote``, differ in size, or changed since they
    were copied; with ``delete``, remove remote files (and folders) that are not local. Top-level
    names in ``exclude`` are neither copied nor deleted. Returns the number of files copied."""
    local = Path(local)
    if not local.is_dir():  # nothing here: copy nothing, and never take it as "delete everything there"
        return 0
    mine = _local_files(local, exclude)
    theirs, their_dirs = _remote_entries(remote, exclude)
    copied = 0
    for rel, (size, mtime) in sorted(mine.items()):
        dst = f"{remote.path}/{rel}"
        have = theirs.get(rel)
        if have is not None and have[0] == size and (_PUSHED.get((remote.uri, dst)) == (size, mtime)
                                                     or have[1] >= mtime - 1.0):  # stores keep whole seconds
            continue
        try:
            _make_parent(remote.fs, dst)
            with open(local / rel, "rb") as src, remote.fs.open_output_stream(dst) as out:
                shutil.copyfileobj(src, out, 8 << 20)
        except FileNotFoundError:  # deleted since we listed it (pruned): nothing to copy
            continue
        _PUSHED[(remote.uri, dst)] = (size, mtime)
        copied += 1
    if delete:
        local_dirs = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_dir()} if local.is_dir() else set()
        gone = sorted(d for d in their_dirs if d not in local_dirs)
        for d in gone:
            if not any(d.startswith(g + "/") for g in gone if g != d):  # the outermost only
                remote.fs.delete_dir(f"{remote.path}/{d}")
        for rel in theirs:
            if rel not in mine and not any(rel.startswith(g + "/") for g in gone):
                remote.fs.delete_file(f"{remote.path}/{rel}")
    return copied


def pull(remote: Remote, local: Path, *, exclude: tuple[str, ...] = ()) -> int:
    """Copy ``remote``'s files that are missing locally or differ in size into ``local`` (each
    written to a temporary name, then renamed: processes pulling the same folder at once do not
    see half files). Returns the number of files copied."""
    local = Path(local)
    theirs, _ = _remote_entries(remote, exclude)
    copied = 0
    for rel, (size, _) in sorted(theirs.items()):
        dst = local / rel
        if dst.is_file() and dst.stat().st_size == size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
        with remote.fs.open_input_stream(f"{remote.path}/{rel}") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 8 << 20)
        os.replace(tmp, dst)
        copied += 1
    return copied


def fetch(remote: Remote, local: Path, flag: str, **kw) -> int:
    """``pull`` for a command that cannot go on without the files: a failure is a DfsearchError
    naming ``flag``, the URI and the local folder (files already fetched stay there; running the
    command again fetches only what is still missing)."""
    try:
        return pull(remote, local, **kw)
    except Exception as e:
        raise DfsearchError(f"{flag} {remote.uri}: fetching it into {local} failed ({_first_line(e)}); "
                            f"what was fetched stays there and running the command again fetches the "
                            f"rest") from None


def try_push(local: Path, remote: Remote, what: str, **kw) -> bool:
    """``push`` that never raises: a failed upload is said on stderr and retried by the next push
    (the local copy stays complete)."""
    return _quietly(lambda: push(local, remote, **kw), f"could not copy {what} to {remote.uri}",
                    f"it stays in {local} and is copied again later")


def try_pull(remote: Remote, local: Path, what: str, **kw) -> bool:
    """``pull`` that never raises: on failure, say so on stderr and go on with what is local."""
    return _quietly(lambda: pull(remote, local, **kw), f"could not fetch {what} from {remote.uri}",
                    f"going on with what is in {local}")


def _quietly(action, failed: str, then: str) -> bool:
    try:
        action()
        return True
    except Exception as e:
        print(f"dfsearch: {failed} ({_first_line(e)}); {then}", file=sys.stderr)
        return False


def _first_line(e: Exception) -> str:
    """``Type: first line of the message`` (at most 300 characters of it)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__
