"""Read W&B offline run files (``offline-run-*/run-*.wandb``) in tests: no server needed."""

import json
import time
from pathlib import Path


def records(path: Path, wait_s: float = 30.0) -> list:
    """Records of an offline ``.wandb`` file, once it is complete: W&B's service process may still
    be writing it when ``run.finish()`` has returned (seen once, on a loaded machine: the metrics
    missing), so it is read again until it holds the run's ``exit`` record (or ``wait_s`` passed)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _parse(path)
        if any(r.WhichOneof("record_type") == "exit" for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse(path: Path) -> list:
    """A LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte
    header: crc32c, little-endian length, type."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: one record complete
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def read_run(run_dir: Path) -> dict:
    """``{"group", "job_type", "project", "name", "config": {...}, "history": [{...}, ...],
    "artifacts": [{"name", "type", "metadata", "files": {path in the artifact: local path, or the
    ``file://`` URI of a reference}}]}``."""
    recs = records(next(Path(run_dir).glob("run-*.wandb")))
    out = {"config": {}, "history": [], "artifacts": []}
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(group=r.run.run_group, job_type=r.run.job_type, project=r.run.project, name=r.run.display_name)
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "artifact":
            a = r.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                     "files": {e.path: e.local_path or e.ref for e in a.manifest.contents}})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    out["config"] = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in out["config"].items()}
    return out
