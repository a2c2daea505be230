"""The search: Tune + Optuna (TPE) + ASHA over Ray Train DDP trials.

All searches here run on a Ray started WITHOUT the dashboard, the setting in which Ray's own
placement-group cleaner cannot work and stock Train-under-Tune hung at the third trial."""

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from dfsearch import commands, remote, store
from dfsearch.search import driver, signals
from dfsearch.search.callbacks import PROGRESS_FILE
from dfsearch.search.cli import build_parser
from dfsearch.search.plan import make_plan
from dfsearch.search.results import TRIALS_FILE
from dfsearch.search.searcher import make_searcher
from dfsearch.search.spec import Options, SearchSpec
from tests.conftest import S3_BUCKET
from tests.wandb_offline import read_run, records

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "spaces" / "tiny.yaml"  # the cnn space with epochs of a few steps
pytestmark = pytest.mark.xdist_group("ray")  # one session Ray; see conftest


def _args(argv):
    return build_parser().parse_args([str(a) for a in argv])


def _plan(argv, space, cluster):
    args = _args(argv)
    return make_plan(SearchSpec.from_args(args, "x"), Options.from_args(args), space, cluster)


@pytest.fixture(scope="module", params=["pool", "no-pool"])
def seq(request, ray_local, easy_data, tmp_path_factory):
    """Four sequential trials of 2 DDP workers each, ASHA stopping some: the pattern that hung at
    the third trial with one TorchTrainer per trial (``--no-pool``), and on a warm worker pool
    (the default). (Trials are deterministic under the seed: with seed 3 the 4th is pruned.)"""
    out = tmp_path_factory.mktemp("search")
    n = 4
    # W&B online with credentials, its server down (a closed local port): the search keeps every run
    # offline (test_every_trial_is_a_wandb_run_with_config_and_metrics reads them) after one probe
    argv = ["--space", TINY, "--data", easy_data, "--out", out, "--name", "seq", "--num-samples", n,
            "--max-epochs", 2, "--workers-per-trial", 2, "--max-concurrent", 1, "--wandb-mode", "online",
            "--seed", 3] + (["--no-pool"] if request.param == "no-pool" else [])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    terminal = io.StringIO()  # what a user's terminal shows (both streams)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(terminal), contextlib.redirect_stderr(terminal):
        mp.setenv("WANDB_API_KEY", "k" * 40)
        mp.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        rc = driver.run(_args(argv))
    run = out / "seq"
    pids = {}  # trial -> the pid of its rank-0 worker process, per epoch
    for d in run.iterdir():
        if (d / "progress.csv").exists():
            h = pd.read_csv(d / "progress.csv")
            pids[str(h.trial_id.iloc[0])] = list(h.worker_pid)
    return dict(rc=rc, run=run, trials=pd.read_parquet(run / TRIALS_FILE), pool=request.param == "pool",
                pids=pids, n=n, terminal=terminal.getvalue())


def test_the_terminal_shows_progress_and_a_line_per_trial_and_the_log_file_keeps_the_rest(seq):
    said, log = seq["terminal"], (seq["run"] / "search.log").read_text()
    t = seq["trials"].set_index("trial_id")
    for k, (tid, row) in enumerate(t.iterrows(), 1):  # one line per ended trial, as it ended (order unknown)
        line = next(x for x in said.splitlines() if f"] {tid} small_cnn: " in x)
        assert f"after {row.epochs} epoch(s), val_acc {row.val_acc:.4f}" in line, line
        assert ("completed" in line) == (row.epochs == 2), line
    assert [x.split("]")[0] for x in said.splitlines() if x.startswith("[")] == [f"[{k}/4" for k in range(1, 5)]
    last = [x for x in said.splitlines() if x.startswith("[4/4]")][0]
    best = t.val_acc.max()
    assert f"4/4 ended, 0 running | epochs {t.epochs.sum()}/8 | best val_acc {best:.4f}" in last, last
    assert "search finished in" in said and "next: python ensemble.py" in said  # the summary
    # quiet: no Tune table, no forwarded worker output, no W&B or Optuna chatter; all of it in the log
    for noise in ("Trial status", "(RayTrainWorker", "wandb:", "A new study created"):
        assert noise not in said, noise
    assert "Trial status" in log and "epoch 1/2 train_loss" in log and "search finished in" in log
    assert any(x.startswith("dfsearch: space") and x.endswith(str(seq["run"] / "search.log")) for x in said.splitlines())



def test_four_sequential_trials_complete_and_free_their_resources(seq, ray_local):
    assert seq["rc"] == 0
    t = seq["trials"]
    assert len(t) == seq["n"] and t.trial_id.is_unique
    assert set(t.status) <= {"completed", "pruned"}, t[["trial_id", "status", "reason"]]
    assert "pruned" in set(t.status) and "completed" in set(t.status)  # ASHA did stop one, and let one finish
    # nothing is left reserved: every placement group is gone and all CPUs are free again
    table = ray_local.util.placement_group_table()
    assert all(pg["state"] == "REMOVED" for pg in table.values()), table
    deadline = time.time() + 30
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == ray_local.cluster_resources()["CPU"]


def test_warm_pool_runs_every_trial_in_the_same_worker_processes(seq):
    """The point of the pool: no new worker group (processes, imports, gloo) per trial; with
    --no-pool each trial has its own."""
    firsts = [p[0] for p in seq["pids"].values()]
    assert len(firsts) == seq["n"] and all(len(set(p)) == 1 for p in seq["pids"].values())
    assert len(set(firsts)) == (1 if seq["pool"] else seq["n"])


def test_trials_table_and_store(seq):
    t, run = seq["trials"], seq["run"]
    for col in ("trial_id", "arch", "lr", "weight_decay", "unfrozen", "batch_size", "optimizer", "aug_hflip",
                "status", "reason", "epochs", "val_acc", "val_auc", "val_loss", "wall_time_s", "checkpoint"):
        assert col in t.columns, col
    assert (t[t.status == "completed"].epochs == 2).all() and (t[t.status == "pruned"].epochs < 2).all()
    # only the best checkpoint of each trial is kept, and it holds that trial's predictions
    for row in t.itertuples():
        ckpts = [c for c in (run / "train" / row.trial_id).glob("checkpoint_*") if c.is_dir()]
        assert [str(c) for c in ckpts] == [row.checkpoint]
        assert (Path(row.checkpoint) / store.PREDICTIONS_FILE).exists()
    cands = store.read_candidates(run)
    preds = store.read_predictions(run)
    assert set(cands.candidate) == set(t.trial_id) == set(preds.candidate)
    assert set(preds.split) == {"val", "test"}


def test_searcher_reports_pruned_failed_and_complete_trials_honestly(tmp_path):
    from dfsearch import search_space

    space = search_space.load("cnn")
    searcher = make_searcher(space, tmp_path, "unit", max_epochs=3, seed=0)
    State = optuna.trial.TrialState
    for tid, results, error, state in [
        ("stopped", [0.6], False, State.PRUNED),          # ASHA stopped it after 1 of 3 epochs
        ("done", [0.6, 0.7, 0.8], False, State.COMPLETE),
        ("crashed", [0.6], True, State.FAIL),
        ("nan", [0.0], False, State.FAIL),
    ]:
        config = searcher.suggest(tid)
        assert config["arch"] == "small_cnn" and "lr" in config["small_cnn"]
        for epoch, v in enumerate(results, 1):
            r = {"val_acc": v, "epoch": epoch, "training_iteration": epoch, "nan_loss": tid == "nan"}
            searcher.on_trial_result(tid, r)
        searcher.on_trial_complete(tid, result=None if error else r, error=error)
        ot = searcher.study.trials[-1]
        assert ot.state == state, tid
        # Optuna keeps a pruned trial's last intermediate value; TPE ranks PRUNED below COMPLETE
        assert ot.value == {State.COMPLETE: 0.8, State.PRUNED: 0.6, State.FAIL: None}[state]
        assert len(ot.intermediate_values) == len(results)  # pruned trials keep their curve for TPE


def test_optuna_hears_the_truth_about_pruned_trials(seq):
    t, run = seq["trials"], seq["run"]
    study = optuna.load_study(study_name="seq", storage=f"sqlite:///{run / 'optuna.db'}")
    by_lr = {tr.params["small_cnn/lr"]: tr for tr in study.trials}
    assert len(by_lr) == seq["n"]
    for row in t.itertuples():
        ot = by_lr[row.lr]
        if row.status == "pruned":
            assert ot.state == optuna.trial.TrialState.PRUNED
        else:
            assert ot.state == optuna.trial.TrialState.COMPLETE
            assert ot.value == pytest.approx(ot.intermediate_values[2])  # the final epoch's value
        assert len(ot.intermediate_values) == row.epochs  # the last report is in the curve too


def test_every_trial_is_a_wandb_run_with_config_and_metrics(seq):
    runs = [read_run(d) for d in sorted((seq["run"] / "wandb").glob("offline-run-*"))]
    trial_runs = [r for r in runs if r["job_type"] == "trial"]
    assert len(trial_runs) == seq["n"] and all(r["group"] == "seq" for r in runs)
    t = seq["trials"].set_index("trial_id")
    for r in trial_runs:
        row = t.loc[r["config"]["trial_id"]]
        assert r["config"]["lr"] == pytest.approx(row.lr) and r["config"]["arch"] == "small_cnn"
        # the input pipelines the worker built: augmentation on train only, a deterministic eval view
        pipes = r["config"]["transforms"]
        assert ("RandomHorizontalFlip" in pipes["train"]) == (row.aug_hflip > 0), (row.aug_hflip, pipes)
        assert ("RandomRotation" in pipes["train"]) == (row.aug_rotation > 0), (row.aug_rotation, pipes)
        assert "Normalize" in pipes["eval"], pipes
        assert not any(op in pipes["eval"] for op in ("Random", "GaussianBlur", "ColorJitter")), pipes["eval"]
        epochs = [h["epoch"] for h in r["history"] if "epoch" in h]
        assert epochs == list(range(1, row.epochs + 1))
        assert all("val_acc" in h for h in r["history"] if "epoch" in h)
    search_runs = [r for r in runs if r["job_type"] == "search"]
    assert len(search_runs) == 1
    logged = {k: v for h in search_runs[0]["history"] for k, v in h.items()}
    assert logged["trials/_type"] == "table-file" and logged["trials/nrows"] == seq["n"]
    assert logged["optuna_history/_type"] == "image-file"


def test_each_trial_s_best_checkpoint_is_a_model_artifact_made_from_the_dataset_artifact(seq):
    """Lineage dataset -> trial -> (ensemble): offline, W&B cannot record inputs, so the artifact
    names travel in the runs' config and the artifacts' metadata (``wandb sync`` uploads both)."""
    runs = [read_run(d) for d in sorted((seq["run"] / "wandb").glob("offline-run-*"))]
    dataset = json.loads((seq["run"] / "dataset.json").read_text())
    (search,) = [r for r in runs if r["job_type"] == "search"]
    (data_art,) = [a for a in search["artifacts"] if a["type"] != "run_table"]  # tables are artifacts too
    assert data_art["type"] == "dataset" and data_art["metadata"]["digest"] == dataset["digest"]
    assert data_art["metadata"]["counts"]["train"]["fake"] > 0 and list(data_art["files"]) == ["dataset.json"]
    t = seq["trials"].set_index("trial_id")
    for r in (r for r in runs if r["job_type"] == "trial"):
        tid = r["config"]["trial_id"]
        assert r["config"]["dataset_artifact"] == data_art["name"]
        (model,) = [a for a in r["artifacts"] if a["type"] != "run_table"]
        assert model["type"] == "model" and model["name"] == f"model-seq-{tid}"
        assert model["metadata"]["inputs"] == [data_art["name"]] and model["metadata"]["arch"] == "small_cnn"
        kept = Path(t.loc[tid, "checkpoint"])  # the trial's best checkpoint, each of its files, by reference
        assert model["metadata"]["checkpoint"] == str(kept)
        assert {Path(p).name for p in model["files"]} == {f.name for f in kept.iterdir() if f.is_file()}
        assert all(ref.startswith("file://") and Path(ref.removeprefix("file://")).is_file()
                   for ref in model["files"].values())  # not copied: no upload waits in Tune's event loop


@pytest.fixture(scope="module")
def concurrent(ray_local, easy_data, tmp_path_factory, module_faults):
    """Two trials at a time (1 worker each); mobilenet trials crash, small_cnn trials go NaN or not."""
    out = tmp_path_factory.mktemp("conc")
    space = out / "two.yaml"  # tiny.yaml's budgets and small_cnn ranges, the shipped mobilenet ranges
    space.write_text(f"base: {REPO / 'search_spaces' / 'all_models.yaml'}\nonly: [small_cnn, mobilenetv2_100]\n"
                     + "profiles:" + TINY.read_text().split("profiles:", 1)[1])
    module_faults({"mobilenetv2_100": {"kind": "raise", "after_epoch": 0}})  # raises before training
    rc = driver.run(_args(["--space", space, "--profile", "paced", "--data", easy_data, "--out", out, "--name", "conc",
                           "--num-samples", 4, "--max-epochs", 2, "--scheduler", "fifo", "--workers-per-trial", 1,
                           "--wandb-mode", "disabled", "--seed", 0]))  # paced epochs: long enough to overlap
    return dict(rc=rc, trials=pd.read_parquet(out / "conc" / TRIALS_FILE))


def test_two_trials_run_at_once_and_a_crashing_trial_is_recorded(concurrent):
    t = concurrent["trials"]
    assert concurrent["rc"] == 0 and len(t) == 4
    assert set(t.arch) == {"small_cnn", "mobilenetv2_100"}
    for row in t.itertuples():
        if row.arch == "mobilenetv2_100":
            assert row.status == "failed" and "injected fault" in row.reason
        else:
            assert row.status == "completed"
    # the cluster (4 CPUs) fits two 1-worker trials: their run intervals overlap
    spans = sorted((r.start, r.start + r.wall_time_s) for r in t.itertuples() if r.status != "failed")
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans


def test_a_trial_whose_ddp_worker_or_pool_supervisor_is_killed_resumes_from_its_checkpoint_and_says_so(
        ray_local, easy_data, tmp_path, faults):
    """``kill -9`` of one of a trial's two DDP workers as its second epoch starts (each trial once):
    the trial resumes from its epoch-1 checkpoint on a fresh worker group and completes; no epoch
    runs twice; the table and the summary say it was retried and from which epoch. Then, as the
    first trial's third epoch starts, ``kill -9`` of its pool's supervisor task (nothing else would
    tell the broker: the trial would wait for ever): the driver starts the pool again and the trial
    resumes from epoch 2. (Its own errors still fail at once:
    ``test_two_trials_run_at_once_and_a_crashing_trial_is_recorded``.)"""
    faults({"small_cnn": [{"kind": "die", "after_epoch": 1, "rank": 1, "once": True},
                          {"kind": "supervisor", "after_epoch": 2}]})
    groups_before = set(ray_local.util.placement_group_table())
    out = tmp_path / "out"
    rc = driver.run(_args(["--space", TINY, "--data", easy_data, "--out", out, "--name", "kill",
                           "--num-samples", 2, "--max-epochs", 3, "--scheduler", "fifo", "--workers-per-trial", 2,
                           "--max-concurrent", 1, "--wandb-mode", "disabled"]))
    fired = sorted(p.name for p in Path(os.environ["DFSEARCH_TEST_FAULTS"]).parent.glob("fired-*"))
    assert len(fired) == 3 and "fired-supervisor" in fired, fired  # each trial's worker, and one supervisor
    t = pd.read_parquet(out / "kill" / TRIALS_FILE).set_index("trial_id")
    assert rc == 0 and list(t.status) == ["completed", "completed"] and list(t.epochs) == [3, 3]
    assert sorted(zip(t.retries, t.resumed_from)) == [(1, "1"), (2, "1,2")], t[["retries", "resumed_from"]]
    for d in (out / "kill").glob("trial_fn_*"):  # Tune's record: every epoch once, in order
        assert list(pd.read_csv(d / "progress.csv").epoch) == [1, 2, 3]
    for tid in t.index:
        assert len(list((out / "kill" / "train" / tid).glob("checkpoint_*"))) == 1  # its best, as any trial
    assert sorted(pd.read_parquet(out / "kill" / store.CANDIDATES_FILE).candidate) == sorted(t.index)
    log = (out / "kill" / "search.log").read_text()
    assert "dfsearch: worker pool 0: its supervisor process died" in log and "starting it again" in log
    groups = {k: g for k, g in ray_local.util.placement_group_table().items() if k not in groups_before}
    assert len(groups) >= 4 and all(g["state"] == "REMOVED" for g in groups.values()), groups  # the dead run's too


def test_a_rank_s_own_error_fails_its_trial_even_when_the_other_rank_dies_in_a_collective(ray_local, easy_data,
                                                                                          tmp_path, faults):
    """Rank 0 raises as epoch 2 starts while rank 1 trains on into DDP's all-reduce: when Train shuts
    the group down, rank 1's collective fails too ("Connection closed by peer"). That is collateral:
    the trial fails at once with rank 0's error, not retried as if a worker had been lost."""
    faults({"small_cnn": {"kind": "raise", "after_epoch": 1, "rank": 0}})
    rc = driver.run(_args(["--space", TINY, "--data", easy_data, "--out", tmp_path, "--name", "own",
                           "--num-samples", 1, "--max-epochs", 3, "--scheduler", "fifo", "--workers-per-trial", 2,
                           "--wandb-mode", "disabled"]))
    t = pd.read_parquet(tmp_path / "own" / TRIALS_FILE)
    assert rc == 1 and list(t.status) == ["failed"] and "injected fault" in t.reason[0], t.reason[0]
    assert list(t.retries) == [0] and list(t.epochs) == [1]


def test_a_pool_that_cannot_start_fails_the_trials_instead_of_waiting(ray_local, easy_data, tmp_path, faults):
    faults({"pool": {"kind": "raise"}})
    t0 = time.time()
    rc = driver.run(_args(["--space", TINY, "--data", easy_data, "--out", tmp_path, "--name", "dead",
                           "--num-samples", 2, "--max-epochs", 1, "--workers-per-trial", 1, "--max-concurrent", 1,
                           "--wandb-mode", "disabled"]))
    t = pd.read_parquet(tmp_path / "dead" / TRIALS_FILE)
    assert rc == 1 and len(t) == 2 and set(t.status) == {"failed"}
    assert all("worker pool failed" in r and "injected pool fault" in r for r in t.reason), list(t.reason)
    assert time.time() - t0 < 240
    assert ray_local.available_resources().get("CPU", 0) > 0


def test_random_search_without_early_stopping_spends_exactly_its_epoch_budget(ray_local, easy_data, tmp_path):
    """The baseline of bench/search_efficiency.py: random sampler, no ASHA, a trial-epoch budget."""
    rc = driver.run(_args(["--space", TINY, "--data", easy_data, "--out", tmp_path, "--name", "rnd",
                           "--num-samples", 10, "--max-epochs", 2, "--budget-epochs", 5, "--searcher", "random",
                           "--scheduler", "fifo", "--workers-per-trial", 1, "--max-concurrent", 1,
                           "--wandb-mode", "disabled"]))
    t = pd.read_parquet(tmp_path / "rnd" / TRIALS_FILE).sort_values("start")
    assert rc == 0 and t.epochs.sum() == 5
    assert list(t.epochs) == [2, 2, 1] and list(t.status) == ["completed", "completed", "pruned"]
    study = optuna.load_study(study_name="rnd", storage=f"sqlite:///{tmp_path / 'rnd' / 'optuna.db'}")
    assert not any("fixed_params" in tr.system_attrs for tr in study.trials)  # nothing enqueued: pure random
    assert json.loads((tmp_path / "rnd" / "search.json").read_text())["searcher"] == "random"


def test_nan_loss_stops_the_trial_and_marks_it(ray_local, easy_data, tmp_path, faults):
    faults({"small_cnn": {"kind": "nan"}})
    rc = driver.run(_args(["--space", TINY, "--data", easy_data, "--out", tmp_path, "--name", "nan",
                           "--num-samples", 1, "--max-epochs", 2, "--workers-per-trial", 1,
                           "--wandb-mode", "disabled"]))
    t = pd.read_parquet(tmp_path / "nan" / TRIALS_FILE)
    assert rc == 1  # nothing finished
    assert list(t.status) == ["failed"] and "NaN" in t.reason[0] and t.epochs[0] == 1
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'nan' / 'optuna.db'}")
    assert [tr.state for tr in study.trials] == [optuna.trial.TrialState.FAIL]


def _checkpoints(run_dir: Path, trial_ids) -> dict:
    return {tid: sorted(c.name for c in (run_dir / "train" / tid).glob("checkpoint_*") if c.is_dir())
            for tid in trial_ids}


def _remote_checkpoints(target, trial_ids) -> dict:
    files, _ = remote._remote_entries(target.child("train"), ())
    return {tid: sorted({f.split("/")[1] for f in files if f.startswith(f"{tid}/checkpoint_")}) for tid in trial_ids}


def _running_trial(run: Path) -> str | None:
    """Once a trial has ended: a trial that has not and whose first epoch Tune has recorded."""
    ended = {json.loads(line)["trial_id"] for line in (run / PROGRESS_FILE).read_text().splitlines()} \
        if (run / PROGRESS_FILE).exists() else set()
    for d in run.glob("trial_fn_*") if ended else ():
        try:
            h = pd.read_csv(d / "progress.csv")
        except (OSError, pd.errors.EmptyDataError):
            continue
        if len(h) and str(h.trial_id.iloc[0]) not in ended:
            return str(h.trial_id.iloc[0])
    return None


@pytest.mark.slow
@pytest.mark.xdist_group("subprocess")  # its own Ray, in subprocesses: beside the "ray" group
def test_ctrl_c_then_resume_then_a_kill_then_resume_loses_and_repeats_nothing(easy_data, tmp_path):
    """A search's life with a local --out, as a user lives it, in one scenario (each step starts
    a fresh driver and Ray, so they share the start-ups):

    1. SIGINT to the search's process group (Ctrl-C in a terminal) while a trial is between
       epochs: the search stops, finishes every W&B run, writes what ended, marks the cut trial
       ``interrupted`` (checkpoint kept, not in the store), says how to resume, exits 130;
    2. ``--resume`` continues the cut trial from its checkpoint; once it has ended, SIGKILL the
       driver and its Ray (no chance to clean up);
    3. ``--resume`` again: every trial ends once; the trials that had ended are not re-run (their
       checkpoints untouched), the cut trial went on from its checkpoint (no epoch repeated or
       lost), and the Optuna study went on."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DFSEARCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, str(REPO / "run_search.py"), "--space", str(TINY), "--profile", "paced",
           "--data", str(easy_data), "--out", str(tmp_path), "--name", "c", "--num-samples", "3", "--max-epochs", "3", "--scheduler", "fifo",
           "--workers-per-trial", "1", "--max-concurrent", "1", "--no-dashboard", "--wandb-mode", "offline"]
    run = tmp_path / "c"
    progress = run / PROGRESS_FILE

    # 1. Ctrl-C
    with open(tmp_path / "first.log", "w") as log:
        p = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline, cut = time.time() + 400, None
        while time.time() < deadline and p.poll() is None and cut is None:
            time.sleep(0.5)
            cut = _running_trial(run)
        assert cut is not None, "no trial was caught between epochs"
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=300)
    said = (tmp_path / "first.log").read_text()
    assert rc == 130, said[-3000:]
    # quiet by default: the terminal has dfsearch's lines only; Tune's tables and the workers' output are in the log
    assert "Trial status" not in said and "(RayTrainWorker" not in said and "(trial_fn" not in said, said[-3000:]
    assert "Trial status" in (run / "search.log").read_text()
    assert "search interrupted (SIGINT)" in said and f"next: python run_search.py --resume --out {tmp_path} --name c" in said
    t = pd.read_parquet(run / TRIALS_FILE).set_index("trial_id")
    assert t.loc[cut, "status"] == "interrupted" and "--resume" in t.loc[cut, "reason"]
    assert set(t.status) <= {"completed", "interrupted"}
    assert not (run / "train" / cut / "final.json").exists()  # it did not end: --resume must go on with it
    assert list((run / "train" / cut).glob("checkpoint_e*"))
    assert set(pd.read_parquet(run / store.CANDIDATES_FILE).candidate) == set(t.index[t.status == "completed"])
    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert wandb_runs and all(  # every run was finished (it has an exit record), the cut trial's too
        any(r.WhichOneof("record_type") == "exit" for r in records(next(d.glob("run-*.wandb")))) for d in wandb_runs)

    # 2. resume, then SIGKILL once the cut trial has ended (and Tune has saved that)
    ended_before = len(progress.read_text().splitlines())
    with open(tmp_path / "second.log", "w") as log:
        p = subprocess.Popen(cmd + ["--resume"], start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                             env=env)
        deadline = time.time() + 400
        while time.time() < deadline and p.poll() is None and len(progress.read_text().splitlines()) <= ended_before:
            time.sleep(0.5)
        time.sleep(5)  # > TUNE_GLOBAL_CHECKPOINT_S: Tune has saved that the trial ended
        assert p.poll() is None, "the search ended before it could be killed: " + (tmp_path / "second.log").read_text()[-2000:]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    done_before = {json.loads(line)["trial_id"] for line in progress.read_text().splitlines()}
    assert cut in done_before
    kept = _checkpoints(run, done_before)

    # 3. resume to the end
    res = subprocess.run(cmd + ["--resume", "--json", "--verbose"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Trial status" in res.stderr  # --verbose: Tune's tables on the terminal again (stderr: --json)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    t = pd.read_parquet(run / TRIALS_FILE)
    assert len(t) == 3 and t.trial_id.is_unique and report["trials"] == 3
    assert set(t.status) == {"completed"} and set(t.epochs) == {3}
    assert _checkpoints(run, done_before) == kept  # not re-run: no new checkpoints
    tune_dir = next(d for d in run.glob("trial_fn_*") if pd.read_csv(d / "progress.csv").trial_id.astype(str).iloc[0] == cut)
    epochs = list(pd.read_csv(tune_dir / "progress.csv").epoch)
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3, epochs  # went on from its checkpoint
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{run / 'optuna.db'}")
    assert len([tr for tr in study.trials if tr.state.is_finished()]) >= 3  # the study went on
    # the run folder names the commands that made it, as typed (dfsearch report shows them)
    typed = ["python", "run_search.py", *cmd[2:]]
    assert [c["argv"] for c in commands.read(run)] == [typed, typed + ["--resume"],
                                                       typed + ["--resume", "--json", "--verbose"]]


def test_search_to_s3_leaves_everything_there_for_ensemble_and_predict_elsewhere(
        ray_local, easy_data, tmp_path, s3_server, monkeypatch, capsys, faults):
    """``--out s3://...`` with the pool's workers writing to a disk the driver cannot see (as on
    another node of a cluster). The search is interrupted once a trial has ended, its local
    staging copy deleted (a new driver machine), and ``--resume`` continues it from the bucket
    alone: no trial lost or repeated. Afterwards the bucket holds the whole run (tables, study,
    store, the best checkpoint of each trial, W&B offline runs); with no local copy left,
    ``ensemble.py --run URI`` and ``dfsearch predict --ensemble URI`` work from the bucket alone.
    (SIGKILL and resume: the local scenario test; the bucket path is the same.)"""
    import threading

    import numpy as np

    from dfsearch.cli import main as dfsearch_main
    from dfsearch.ensemble.calibration import calibrate
    from dfsearch.ensemble_cli import main as ensemble_main

    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path / "cache"))
    faults({"pool": {"kind": "elsewhere", "root": str(tmp_path / "node2")}})
    out = f"s3://{S3_BUCKET}/{tmp_path.name}/runs{s3_server}"
    target = remote.open_uri(remote.join(out, "s3run"))
    staged = remote.staging_dir(target.uri)
    argv = ["--space", TINY, "--data", easy_data, "--out", out, "--name", "s3run", "--num-samples", 3,
            "--max-epochs", 2, "--workers-per-trial", 1, "--max-concurrent", 1, "--wandb-mode", "offline",
            "--seed", 5, "--json"]

    def interrupt_once_a_trial_ended():
        progress = staged / PROGRESS_FILE
        while not (progress.exists() and progress.read_text().strip()):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the search's handler takes it

    threading.Thread(target=interrupt_once_a_trial_ended, daemon=True).start()
    with open(tmp_path / "first.json", "w") as report_to:
        assert driver.run(_args(argv), report_to=report_to) == 130
    first = json.loads((tmp_path / "first.json").read_text())
    ended = {json.loads(line)["trial_id"] for line in (staged / PROGRESS_FILE).read_text().splitlines()}
    assert first["interrupted"] == "SIGINT" and first["copied"] and ended
    kept = _remote_checkpoints(target, ended)
    shutil.rmtree(tmp_path / "cache")  # a new driver machine: nothing local

    with open(tmp_path / "r.json", "w") as report_to:
        rc = driver.run(_args(argv + ["--resume"]), report_to=report_to)
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["trials"] == 3 and report["finished"] == 3
    assert _remote_checkpoints(target, ended) == kept  # the trials that had ended were not re-run
    assert report["copied"] and report["uri"] == target.uri and target.uri in report["next"]
    files, _ = remote._remote_entries(target, ())
    for name in (TRIALS_FILE, store.PREDICTIONS_FILE, store.CANDIDATES_FILE, "optuna.db", "tuner.pkl",
                 "search.json"):
        assert name in files, name
    assert any(f.startswith("wandb/") for f in files) and not any(f.startswith("pools/") for f in files)
    with target.fs.open_input_file(f"{target.path}/{store.CANDIDATES_FILE}") as f:
        cands = pd.read_parquet(f)
    with target.fs.open_input_file(f"{target.path}/{TRIALS_FILE}") as f:
        finished = pd.read_parquet(f).query("status != 'failed'").trial_id.tolist()
    assert finished and sorted(cands.trial_id) == sorted(finished)
    assert all(len(v) == 1 for v in _remote_checkpoints(target, finished).values()), _remote_checkpoints(target, finished)  # the best only
    for row in cands.itertuples():  # relative to the run folder, and there
        assert not row.checkpoint.startswith("/") and f"{row.checkpoint}/meta.json" in files
    staged = remote.staging_dir(target.uri)
    for tid in finished:  # trained on "node2"; on the driver's disk only through the bucket
        assert (tmp_path / "node2" / tid / "final.json").exists()
        assert _checkpoints(staged, [tid])[tid] == _remote_checkpoints(target, [tid])[tid]

    shutil.rmtree(tmp_path / "cache")  # another machine: nothing local
    capsys.readouterr()
    # 4-step trials may sit at chance: the hand-over is under test here, not their quality
    assert ensemble_main(["--run", target.uri, "--top-k", "4", "--wandb-mode", "disabled", "--json",
                          "--keep-chance-level"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["uri"] == target.child("ensemble").uri and target.exists("ensemble/ensemble.json")
    log = target.fs.open_input_stream(target.child(commands.FILE).path).read().decode()
    assert [json.loads(line)["argv"][:3] for line in log.splitlines()][-1] == ["python", "ensemble.py", "--run"]
    preds = store.read_predictions(remote.staging_dir(target.uri))
    test = preds[preds.split == "test"].pivot(index="sample_id", columns="candidate", values="prob_fake")
    ids = list(test.index[:4])
    want = calibrate(sum(m["weight"] * calibrate(test.loc[ids, m["candidate"]].to_numpy(np.float64), **m["calibration"])
                         for m in result["members"]),
                     result["calibration"]["slope"], result["calibration"]["intercept"])

    shutil.rmtree(tmp_path / "cache")  # and another
    assert dfsearch_main(["predict", "--ensemble", remote.join(target.uri, "ensemble", "ensemble.json"), "--json",
                          *[str(easy_data / i) for i in ids]]) == 0
    got = json.loads(capsys.readouterr().out)["predictions"]
    np.testing.assert_allclose([g["prob_fake"] for g in got], want, rtol=0, atol=1e-5)


def test_search_run_dir_feeds_the_ensemble_and_predict(seq, easy_data, capsys):
    """End to end: the search's run dir -> `ensemble.py --top-k 4` -> `dfsearch predict` gives the
    ensemble-weighted stored test probabilities for the same images."""
    import numpy as np

    from dfsearch.ensemble.calibration import calibrate
    from dfsearch.ensemble_cli import main as ensemble_main
    from dfsearch.predict import predict_paths

    rc = ensemble_main(["--run", str(seq["run"]), "--top-k", "4", "--wandb-mode", "offline", "--json",
                        "--keep-chance-level"])  # 4-step trials may sit at chance: the hand-over is under test
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out)
    members = result["members"]
    assert 1 <= len(members) <= 4 and sum(m["weight"] for m in members) == pytest.approx(1.0)
    ensemble_json = Path(result["out_dir"]) / "ensemble.json"
    preds = store.read_predictions(seq["run"])
    test = preds[preds.split == "test"].pivot(index="sample_id", columns="candidate", values="prob_fake")
    ids = list(test.index[:6])
    want = calibrate(sum(m["weight"] * calibrate(test.loc[ids, m["candidate"]].to_numpy(np.float64), **m["calibration"])
                         for m in members),
                     result["calibration"]["slope"], result["calibration"]["intercept"])
    got, errors = predict_paths(ensemble_json, [easy_data / s for s in ids])
    assert errors == []
    np.testing.assert_allclose([g["prob_fake"] for g in got], want, rtol=0, atol=1e-5)

    # the most confident mistakes (W&B's table) are scored as predict scores, at the stored threshold
    from dfsearch.ensemble.mistakes import confident_mistakes, scored

    every = scored(seq["run"], result).set_index("sample_id")
    np.testing.assert_allclose(every.loc[ids, "prob_fake"], [g["prob_fake"] for g in got], rtol=0, atol=1e-5)
    assert (every.predicted == every.label).mean() == pytest.approx(result["calibration"]["test"]["accuracy"])
    wrong = confident_mistakes(seq["run"], result, n=16)
    assert len(wrong) == min(16, int((every.predicted != every.label).sum())) and len(wrong) > 0
    assert (wrong.predicted != wrong.label).all() and wrong.confidence.is_monotonic_decreasing
    assert wrong.confidence.iloc[0] == (every.confidence[every.predicted != every.label]).max()
    # W&B: the ensemble is an artifact made from its members' model artifacts, which the trials logged
    (ens_dir,) = (Path(result["out_dir"]) / "wandb").glob("offline-run-*")
    ens_run = read_run(ens_dir)
    (art,) = [a for a in ens_run["artifacts"] if a["type"] == "ensemble"]
    assert art["name"] == "ensemble-seq" and "ensemble.json" in art["files"]
    assert art["metadata"]["inputs"] == [f"model-seq-{m['candidate']}" for m in members]
    trial_models = {a["name"] for d in (seq["run"] / "wandb").glob("offline-run-*") for a in read_run(d)["artifacts"]}
    assert set(art["metadata"]["inputs"]) <= trial_models
    logged = {k: v for h in ens_run["history"] for k, v in h.items()}
    assert logged["test_mistakes/_type"] == "table-file" and logged["test_mistakes/nrows"] == len(wrong)
    (tab,) = [a for a in ens_run["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-test_mistakes")]
    table = json.loads(Path(tab["files"]["test_mistakes.table.json"]).read_text())  # as W&B shows it, images included
    assert table["columns"][:2] == ["image", "sample_id"] and [r[1] for r in table["data"]] == list(wrong.sample_id)
    thumbs = [r[0]["path"] for r in table["data"]]  # each row's thumbnail, from the dataset, in the artifact
    assert all(Path(tab["files"][p]).is_file() for p in thumbs) and len(set(thumbs)) >= 1


@pytest.mark.slow
@pytest.mark.xdist_group("subprocess")  # its own Ray, in subprocesses: beside the "ray" group
def test_a_search_runs_on_an_existing_cluster_given_by_address_and_never_joins_one_without(easy_data, tmp_path):
    """``ray start --head`` (as ``ray up`` does on a head node), then ``--address HOST:PORT``: the
    search runs its trials on that cluster instead of starting a local Ray. Without
    RAY_AUTH_MODE=token Ray cannot connect to it: a clear error saying so, not a retry loop. Once
    that cluster is gone, its address file stays behind (``ray start`` writes it, a killed head does
    not remove it): a search without ``--address`` starts its own Ray instead of trying to join it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short (socket paths), and this test's alone
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(REPO), DFSEARCH_CACHE=str(tmp_path / "cache"), RAY_TMPDIR=str(ray_tmp),
               HOME=str(tmp_path / "home"))
    # `ray start` turns on token authentication where a token exists (any earlier local Ray writes
    # ~/.ray/auth_token): a token of this test's own, whatever ran before it on this machine
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    cmd = [sys.executable, str(REPO / "run_search.py"), "--space", str(TINY), "--data", str(easy_data),
           "--out", str(tmp_path), "--num-samples", "2", "--max-epochs", "1", "--workers-per-trial", "1",
           "--wandb-mode", "disabled", "--json"]
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=3", "--include-dashboard=false",
                                 "--disable-usage-stats"],
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp_path / "head.log").read_text()
                time.sleep(1)
        on_cluster = cmd + ["--name", "a", "--address", f"127.0.0.1:{port}"]
        # with a token, Ray uses it for an explicit address only when asked (RAY_AUTH_MODE=token)
        res = subprocess.run(on_cluster, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 2 and "RAY_AUTH_MODE=token" in res.stderr, res.stderr[-3000:]
        assert not (tmp_path / "a").exists()
        res = subprocess.run(on_cluster, capture_output=True, text=True, env={**env, "RAY_AUTH_MODE": "token"},
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        report = json.loads(res.stdout)  # stdout is the report alone: the workers' late log lines do not follow it
        assert report["trials"] == 2 and report["finished"] == 2
        assert "local Ray" not in res.stderr and "2 concurrent" in res.stderr  # the cluster's 3 CPUs: 2 x (1 + 0.5)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    try:
        assert (ray_tmp / "ray" / "ray_current_cluster").exists()  # what plain ray.init() would try to join
        # how every command starts Ray without --address (the search: driver._start_ray); a whole
        # search here would only repeat the cluster run above
        code = ("from dfsearch.cluster import init_ray; import ray; assert init_ray(None, num_cpus=1, "
                "include_dashboard=False); print(ray.get_runtime_context().gcs_address)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert not res.stdout.strip().endswith(f":{port}"), res.stdout  # a fresh local Ray, not the dead cluster
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_first_signal_stops_the_search_through_tune_and_a_second_one_aborts():
    """(A signal a process sends itself is handled before its next bytecode: no waiting needed.)"""
    tune_stops, terms = [], []
    old_usr1 = signal.getsignal(signal.SIGUSR1)
    old_term = signal.signal(signal.SIGTERM, lambda *_: terms.append(1))  # what was there before (Ray's)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's (other tests' libraries change it)
    try:
        with signals.StopOnSignal() as stop:
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune's SIGINT handler would miss SIGTERM
            signal.signal(signal.SIGUSR1, lambda *_: tune_stops.append(1))  # as Tune listens once fit() runs
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == "SIGTERM" and tune_stops == [1] and terms == []
            assert stop.exit_status() == 143
            with pytest.raises(KeyboardInterrupt):  # a second signal: the handler from before, at once
                os.kill(os.getpid(), signal.SIGINT)
        assert tune_stops == [1]
        with signals.StopOnSignal() as stop:  # Tune not listening yet (restoring): abort at once
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received is None and terms == [1]
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_ddp_ranks_sharing_one_gpu_are_refused_before_anything_starts():
    """nccl refuses two ranks on one GPU, but only at the first collective of every trial (seen on an
    H100: ~55 s per trial, then 'Duplicate GPU detected'); the plan says no at once."""
    from dfsearch import search_space
    from dfsearch.errors import DfsearchError

    args = _args(["--space", "cnn", "--workers-per-trial", 2, "--gpus-per-worker", 0.5])
    with pytest.raises(DfsearchError, match="share one GPU, which nccl refuses"):
        make_plan(SearchSpec.from_args(args, "x"), Options.from_args(args), search_space.load("cnn"),
                  {"CPU": 16, "GPU": 1})


def test_flags_override_the_profile_budgets(monkeypatch):
    from dfsearch import search_space

    space = search_space.load("all_models")
    p = _plan(["--grace-period", 2, "--max-epochs", 6, "--num-samples", 5, "--workers-per-trial", 1], space,
              {"CPU": 3})
    prof = p.profile
    assert (prof.grace_period, prof.max_epochs, prof.num_samples, prof.workers_per_trial) == (2, 6, 5, 1)
    assert p.max_concurrent == 2  # 3 CPUs fit two 1-worker trials with their 0.5-CPU drivers
    assert _plan(["--grace-period", 9, "--max-epochs", 4], space, {"CPU": 3}).profile.grace_period == 4  # capped at max_epochs


def test_a_staged_search_whose_copy_never_reached_the_uri_is_kept(tmp_path, monkeypatch):
    """A search staged locally whose copy to the URI failed is not wiped by a new search of that
    name: the user is told to --resume it (which copies it)."""
    from dfsearch.errors import DfsearchError

    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path / "cache"))
    out = f"file://{tmp_path}/bucket"
    staged = remote.staging_dir(remote.join(out, "x"))
    staged.mkdir(parents=True)
    (staged / "tuner.pkl").write_bytes(b"state")
    with pytest.raises(DfsearchError, match=f"already exists .*--resume .*copy it to file://{tmp_path}/bucket/x"):
        driver.run(_args(["--space", "cnn", "--out", out, "--name", "x"]))
    assert (staged / "tuner.pkl").read_bytes() == b"state"
    (staged / "tuner.pkl").unlink()  # without Tune's state there is nothing to resume
    with pytest.raises(DfsearchError, match="--resume: no previous search named 'x'"):
        driver.run(_args(["--space", "cnn", "--out", out, "--name", "x", "--resume"]))
