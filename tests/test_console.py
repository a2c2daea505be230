"""The search's terminal: quiet by default, everything in search.log, a live view of the search."""

import contextlib
import io
import logging
import sys
import time

import pytest

from dfsearch.search.console import Console, SearchProgress, say


@contextlib.contextmanager
def terminal():
    """A terminal's two streams (in the test's body: pytest sets its own after the fixtures ran)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def _noise(logger_name: str) -> None:
    print("Trial status: 1 RUNNING")  # Tune's table
    print("(RayTrainWorker pid=1) epoch 1/2 train_loss 0.69", file=sys.stderr)  # a forwarded worker line
    logging.getLogger(logger_name).error("optuna: A new study created")
    print("dfsearch: a notice of ours", file=sys.stderr)
    sys.stderr.write("dfsearch: a line written in ")
    sys.stderr.write("two pieces\n")


def test_quiet_terminal_shows_our_lines_only_and_the_log_keeps_everything(tmp_path):
    logger = logging.getLogger("test_console_quiet")
    with terminal() as (out, err):
        handler = logging.StreamHandler(sys.stderr)  # made before the console, as Ray's and Optuna's are
        logger.addHandler(handler)
        try:
            with Console(tmp_path) as console:
                _noise("test_console_quiet")
                say("search finished in 1.0 min")
                assert console.path == tmp_path / "search.log"
            assert handler.stream is err  # given back
            assert sys.stdout is out and sys.stderr is err
        finally:
            logger.removeHandler(handler)
    shown = out.getvalue() + err.getvalue()
    assert "dfsearch: a notice of ours" in err.getvalue() and "dfsearch: a line written in two pieces" in shown
    assert "search finished in 1.0 min" in out.getvalue()
    for noise in ("Trial status", "RayTrainWorker", "A new study created"):
        assert noise not in shown, noise
    log = (tmp_path / "search.log").read_text()
    for line in ("Trial status: 1 RUNNING", "(RayTrainWorker pid=1) epoch 1/2", "optuna: A new study created",
                 "dfsearch: a notice of ours", "search finished in 1.0 min"):
        assert line in log, line


def test_verbose_shows_everything_and_still_logs_it(tmp_path):
    with terminal() as (out, err), Console(tmp_path, verbose=True):
        print("Trial status: 1 RUNNING")
        print("(RayTrainWorker pid=1) epoch 1/2", file=sys.stderr)
    assert "Trial status" in out.getvalue() and "RayTrainWorker" in err.getvalue()
    assert "Trial status" in (tmp_path / "search.log").read_text()


def test_a_late_writer_after_the_console_ended_reaches_the_terminal(tmp_path):
    with terminal() as (out, _):
        with Console(tmp_path):
            kept = sys.stdout  # e.g. a Ray thread that looked the stream up before the end
        kept.write("late line\n")
    assert "late line" in out.getvalue()


def test_two_consoles_append_to_one_log(tmp_path):
    with terminal():
        with Console(tmp_path):
            print("first run")
        with Console(tmp_path):
            print("resumed run")
    log = (tmp_path / "search.log").read_text()
    assert log.index("first run") < log.index("resumed run") and log.count("=====") == 2


def test_progress_counts_trials_epochs_and_the_best_trial(capsys):
    p = SearchProgress(planned=4, max_epochs=3, metric="val_acc", mode="max")
    assert p.eta_s() is None and "best val_acc: -" in p.status()
    p.started("t1", "small_cnn")
    p.result("t1", "small_cnn", 1, 0.6)
    p.result("t1", "small_cnn", 2, 0.7)
    p.started("t2", "resnet18")
    p.result("t2", "resnet18", 1, 0.9)
    p.result("t1", "small_cnn", 2, 0.7)  # a repeated report adds no epoch
    assert p.epochs_used() == 3 and p.epochs_planned() == 12
    assert p.best_text() == "best val_acc 0.9000 (t2 resnet18)"
    p.trial_ended("t1", "small_cnn", "stopped early", 2, 0.7)
    line = capsys.readouterr().err.strip()
    assert line.startswith("[1/4] t1 small_cnn: stopped early after 2 epoch(s), val_acc 0.7000 | 1/4 ended, 1 running")
    assert "epochs 3/12" in line and "best val_acc 0.9000 (t2 resnet18)" in line and "left" in line
    p.close()


def test_without_a_terminal_a_status_line_comes_at_most_every_heartbeat(capsys, monkeypatch):
    from dfsearch.search import console

    p = SearchProgress(planned=2, max_epochs=3, metric="val_acc", mode="max")
    p.result("a", "x", 1, 0.5)
    assert capsys.readouterr().err == ""  # just started
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.0)
    p.result("a", "x", 2, 0.6)
    assert capsys.readouterr().err.startswith("... 0/2 ended, 1 running | epochs 2/6 | best val_acc 0.6000 (a x)")


def test_time_left_follows_the_epoch_rate_and_the_epochs_trials_really_run():
    p = SearchProgress(planned=4, max_epochs=4, metric="val_loss", mode="min")
    p.t0 = time.time() - 100  # 100 s for 2 epochs: 50 s an epoch
    p.started("a", "x")
    p.result("a", "x", 1, 0.5)
    p.result("a", "x", 2, 0.4)
    p.trial_ended("a", "x", "stopped early", 2, 0.4)  # ASHA: trials run 2 epochs, not 4
    # 3 trials left x 2 epochs x 50 s
    assert p.eta_s() == pytest.approx(300, rel=0.05)
    p.started("b", "x")
    p.result("b", "x", 3, 0.45)  # past the mean (2): promoted by ASHA, expected to run its 4 epochs
    p.t0 = time.time() - 250  # 5 epochs in 250 s: 50 s an epoch
    assert p.eta_s() == pytest.approx((2 * 2 + 1) * 50, rel=0.05)
    assert p.best_text() == "best val_loss 0.4000 (a x)"  # mode min
    assert p.best[0] == 0.4


def test_progress_resumes_with_what_an_earlier_run_ended_and_respects_an_epoch_budget():
    ended = [{"trial_id": "a", "arch": "small_cnn", "epoch": 3, "val_acc": 0.8},
             {"trial_id": "b", "arch": "resnet18", "epoch": 1, "val_acc": None}]
    p = SearchProgress(planned=5, max_epochs=3, metric="val_acc", mode="max", budget_epochs=10, ended=ended)
    assert p.ended == 2 and p.epochs_used() == 4 and p.epochs_planned() == 10
    assert p.best_text() == "best val_acc 0.8000 (a small_cnn)"
    assert p.eta_s() is None  # no epoch in this run yet: no rate


def test_a_workers_own_notice_and_the_lines_under_a_shown_one_reach_the_terminal(tmp_path):
    with terminal() as (out, err), Console(tmp_path):
        print("\x1b[36m(trial_fn pid=42)\x1b[0m dfsearch: lost a worker; retry 1/2 from epoch 1", file=sys.stderr)
        print("(RayTrainWorker pid=7) epoch 1/2 train_loss 0.69", file=sys.stderr)
        print("dfsearch: a message\n  with a second line\nTrial status: 1 RUNNING", file=sys.stderr)
    shown = err.getvalue()
    assert "dfsearch: lost a worker; retry 1/2 from epoch 1" in shown and "pid=42" not in shown
    assert "  with a second line" in shown
    assert "RayTrainWorker" not in shown and "Trial status" not in shown


def test_a_signal_handler_that_prints_inside_a_write_does_not_deadlock_and_threads_keep_whole_lines(tmp_path):
    import threading

    with terminal() as (_, err), Console(tmp_path) as console:
        with console._lock:  # what a signal handler meets when it interrupts this thread inside a write
            print("dfsearch: SIGINT: stopping", file=sys.stderr)

        def writer(k):
            for i in range(200):
                print(f"thread {k} line {i} " + "x" * 50, file=sys.stdout if k % 2 else sys.stderr)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert "dfsearch: SIGINT: stopping" in err.getvalue()
    lines = [x for x in (tmp_path / "search.log").read_text().splitlines() if x.startswith("thread ")]
    assert len(lines) == 800 and all(x.endswith("x" * 50) and x.count("thread") == 1 for x in lines)


def test_a_handler_made_while_the_console_was_on_writes_to_the_terminal_after_it(tmp_path):
    logger = logging.getLogger("test_console_late_handler")
    with terminal() as (_, err):
        with Console(tmp_path):
            handler = logging.StreamHandler()  # sys.stderr now: the console's tee (as Optuna's is made)
            logger.addHandler(handler)
        try:
            assert handler.stream is err
        finally:
            logger.removeHandler(handler)
