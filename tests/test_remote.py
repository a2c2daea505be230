"""Run folders at a URI: push/pull between a local folder and a remote one, on a local ``file://``
target and on S3 (a moto S3 server on localhost, reached the way a user reaches MinIO)."""

import os
import shutil
import time

import pytest

from dfsearch import remote
from dfsearch.errors import DfsearchError
from tests.conftest import S3_BUCKET


@pytest.fixture(params=["file", "s3"])
def target(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/remote/runs"
    query = request.getfixturevalue("s3_server")
    return f"s3://{S3_BUCKET}/{tmp_path.name}/runs{query}"


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _remote_tree(r):
    files, _ = remote._remote_entries(r, ())
    out = {}
    for rel in files:
        with r.fs.open_input_stream(f"{r.path}/{rel}") as f:
            out[rel] = f.read()
    return out


def test_push_then_pull_reproduces_the_folder_and_skips_half_written_files(target, tmp_path):
    src = tmp_path / "src"
    (src / "train" / "t1" / "checkpoint_e0001").mkdir(parents=True)
    (src / "train" / "t1" / "checkpoint_e0001" / "model.safetensors").write_bytes(os.urandom(3000))
    (src / "train" / "t1" / ".partial_e0002").mkdir()
    (src / "train" / "t1" / ".partial_e0002" / "model.safetensors").write_bytes(b"half")
    (src / "train" / "t1" / "final.json.tmp").write_text("{")
    (src / "tuner.pkl").write_bytes(b"state")
    (src / "pools").mkdir()
    (src / "pools" / "x.txt").write_text("not copied")
    r = remote.open_uri(remote.join(target, "run1"))
    remote.check_writable(r)
    assert remote.push(src, r, exclude=("pools",)) == 2
    want = {"train/t1/checkpoint_e0001/model.safetensors", "tuner.pkl"}
    assert set(_remote_tree(r)) == want
    assert remote.push(src, r, exclude=("pools",)) == 0  # nothing changed: nothing copied

    dst = tmp_path / "dst"
    assert remote.pull(r, dst) == 2
    assert _tree(dst) == {k: v for k, v in _tree(src).items() if k in want}
    assert remote.pull(r, dst) == 0
    assert not list(dst.rglob("*.tmp"))


def test_push_copies_changed_files_and_delete_removes_pruned_checkpoints(target, tmp_path):
    src = tmp_path / "src"
    for e in (1, 2):
        (src / f"checkpoint_e000{e}").mkdir(parents=True)
        (src / f"checkpoint_e000{e}" / "meta.json").write_text(f"{{'epoch': {e}}}")
    (src / "trials.parquet").write_bytes(b"v1")
    r = remote.open_uri(remote.join(target, "t"))
    remote.push(src, r)
    time.sleep(1.1)  # object stores keep whole seconds
    (src / "trials.parquet").write_bytes(b"v2")  # same size, newer
    shutil.rmtree(src / "checkpoint_e0001")  # pruned locally
    assert remote.push(src, r, delete=True) == 1
    assert _remote_tree(r) == {"checkpoint_e0002/meta.json": b"{'epoch': 2}", "trials.parquet": b"v2"}
    assert not r.exists("checkpoint_e0001")


def test_push_without_delete_keeps_what_another_node_wrote(target, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "train" / "t1").mkdir(parents=True)
    (a / "train" / "t1" / "final.json").write_text("{}")
    b.mkdir()
    (b / "tuner.pkl").write_bytes(b"s")
    r = remote.open_uri(remote.join(target, "n"))
    remote.push(a, r)
    remote.push(b, r, delete=True, exclude=("train",))  # the driver: its files only
    assert set(_remote_tree(r)) == {"train/t1/final.json", "tuner.pkl"}


def test_bad_uris_are_named_with_what_is_accepted(tmp_path):
    with pytest.raises(DfsearchError, match=r"--out nosuch://x/y: cannot open.*accepted: s3://"):
        remote.open_uri("nosuch://x/y")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: a file where the folder should be
            ro.chmod(0o700)
            ro.rmdir()
            ro.write_text("a file")
        with pytest.raises(DfsearchError, match=f"--out file://{ro}/run: cannot write there"):
            remote.check_writable(remote.open_uri(f"file://{ro}/run"))
    finally:
        ro.chmod(0o700)


def test_a_missing_bucket_is_an_error_before_anything_runs(s3_server):
    r = remote.open_uri(f"s3://no-such-bucket/runs{s3_server}")
    with pytest.raises(DfsearchError, match=r"s3://no-such-bucket/runs.*cannot write there.*credentials"):
        remote.check_writable(r)


def test_join_keeps_the_query_and_staging_is_stable(monkeypatch, tmp_path):
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path))
    u = remote.join("s3://b/runs?endpoint_override=h:9&scheme=http", "exp1")
    assert u == "s3://b/runs/exp1?endpoint_override=h:9&scheme=http"
    assert remote.staging_dir(u) == remote.staging_dir(u)
    assert remote.staging_dir(u).name == "exp1" and remote.staging_dir(u).parent.parent == tmp_path / "runs"
    assert remote.staging_dir(u) != remote.staging_dir(remote.join("s3://b/other", "exp1"))
    assert remote.split(u) == ("s3://b/runs?endpoint_override=h:9&scheme=http", "exp1")
    assert remote.split("file:///tmp/r/e/ensemble.json") == ("file:///tmp/r/e", "ensemble.json")


def test_a_failed_fetch_names_the_uri_keeps_what_came_and_a_rerun_fetches_the_rest(tmp_path):
    (tmp_path / "remote").mkdir()
    for name in ("a.json", "b.json", "c.json"):
        (tmp_path / "remote" / name).write_text(name)
    r = remote.open_uri(f"file://{tmp_path}/remote")
    local = tmp_path / "local"
    (local / "b.json").mkdir(parents=True)  # the local disk refuses this one file
    with pytest.raises(DfsearchError, match=rf"--run file://{tmp_path}/remote: fetching it into {local} failed "
                                            rf"\(IsADirectoryError.*running the command again fetches the rest"):
        remote.fetch(r, local, "--run")
    assert (local / "a.json").read_text() == "a.json"
    (local / "b.json").rmdir()
    assert remote.fetch(r, local, "--run") == 2  # b and c; a is not fetched again
    assert {p.name: p.read_text() for p in local.iterdir()} == {n: n for n in ("a.json", "b.json", "c.json")}


def test_commands_that_write_a_local_folder_refuse_a_uri_out_instead_of_making_s3_colon(tmp_path, capsys,
                                                                                       monkeypatch):
    from dfsearch.cli import main as dfsearch_main
    from dfsearch.ensemble_cli import main as ensemble_main

    monkeypatch.chdir(tmp_path)
    assert dfsearch_main(["train", "--out", "s3://b/x", "--data", str(tmp_path)]) == 2
    assert "--out s3://b/x: `dfsearch train` writes a local folder" in capsys.readouterr().err
    assert ensemble_main(["--run", str(tmp_path), "--out", "s3://b/e"]) == 2
    assert "--out s3://b/e: a local folder only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_local_folder_is_never_pushed_as_delete_everything(tmp_path):
    (tmp_path / "remote" / "t1").mkdir(parents=True)
    (tmp_path / "remote" / "t1" / "final.json").write_text("{}")
    r = remote.open_uri(f"file://{tmp_path}/remote")
    assert remote.push(tmp_path / "not-here", r, delete=True) == 0
    assert (tmp_path / "remote" / "t1" / "final.json").exists()


def test_ensemble_and_predict_name_a_uri_that_holds_no_run(tmp_path, capsys):
    from dfsearch.cli import main as dfsearch_main
    from dfsearch.ensemble_cli import main as ensemble_main

    (tmp_path / "empty").mkdir()
    assert ensemble_main(["--run", f"file://{tmp_path}/empty"]) == 2
    err = capsys.readouterr().err
    assert f"--run file://{tmp_path}/empty: no predictions.parquet there" in err
    assert dfsearch_main(["predict", "--ensemble", f"file://{tmp_path}/empty/ensemble/ensemble.json", "x.jpg"]) == 2
    assert "no such file; expected URI/<run>/ensemble/ensemble.json" in capsys.readouterr().err


def test_ensemble_and_predict_that_cannot_fetch_say_so_instead_of_a_traceback(tmp_path, capsys, monkeypatch):
    from dfsearch.cli import main as dfsearch_main
    from dfsearch.ensemble_cli import main as ensemble_main

    run = tmp_path / "remote" / "run1"
    (run / "ensemble").mkdir(parents=True)
    (run / "predictions.parquet").write_bytes(b"x")
    (run / "ensemble" / "ensemble.json").write_text("{}")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path / "cache"))
    assert ensemble_main(["--run", f"file://{run}"]) == 2
    assert f"--run file://{run}: fetching it into {tmp_path / 'cache'}" in capsys.readouterr().err
    assert dfsearch_main(["predict", "--ensemble", f"file://{run}/ensemble/ensemble.json", "x.jpg"]) == 2
    assert f"--ensemble file://{run}: fetching it into" in capsys.readouterr().err


def test_a_failed_copy_mid_search_is_said_not_raised_and_the_next_one_catches_up(tmp_path, capsys):
    src = tmp_path / "run"
    (src / "train" / "t1").mkdir(parents=True)
    (src / "train" / "t1" / "final.json").write_text("{}")
    (tmp_path / "remote").write_text("a file where the folder should be")  # the store refuses writes
    r = remote.open_uri(f"file://{tmp_path}/remote/run")
    assert remote.try_push(src, r, "the search state") is False
    err = capsys.readouterr().err
    assert f"could not copy the search state to file://{tmp_path}/remote/run" in err and f"stays in {src}" in err
    assert (src / "train" / "t1" / "final.json").exists()
    (tmp_path / "remote").unlink()  # the store is back
    assert remote.try_push(src, r, "the search state") is True
    assert (tmp_path / "remote" / "run" / "train" / "t1" / "final.json").exists()
    assert remote.try_pull(remote.open_uri(f"file://{tmp_path}/remote/run"), tmp_path / "copy", "x") is True
