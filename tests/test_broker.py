"""The warm pools' broker (``dfsearch.pool.broker``), driven directly (no Ray): what happens to a
trial whose pool's supervisor died while its workers, not yet gone, still talk. The whole story,
with Ray and a real ``kill -9``, is in ``tests/test_search.py`` (the killed-worker test)."""

import json
import threading
import time

from dfsearch import checkpoint_policy
from dfsearch.pool.broker import BrokerState
from dfsearch.pool.protocol import (CONTINUE, SHUTDOWN, EpochResult, TrialDone, TrialFailed, TrialLost,
                                    TrialRequest)

REQUEST = TrialRequest(train={}, candidate="t1", trial_dir="/nowhere")


def _running(broker: BrokerState, pool: int = 0, generation: int = 0):
    broker.submit("t1", REQUEST)
    return broker.take(pool, 0, generation)


def test_each_take_gets_a_new_ticket_and_messages_of_the_current_one_arrive():
    broker = BrokerState(1)
    job = _running(broker)
    assert broker.post("t1", EpochResult({"epoch": 1}), job.ticket)
    assert broker.fetch("t1", 0) == [EpochResult({"epoch": 1})]
    broker.decide("t1", 1, CONTINUE)
    assert broker.wait_decision("t1", 1, 0, job.ticket) == CONTINUE
    assert broker.post("t1", TrialDone(), job.ticket)
    assert broker.fetch("t1", 0) == [TrialDone()]
    assert _running(broker).ticket != job.ticket


def test_a_lost_supervisor_gives_its_trial_back_and_silences_the_run_it_owned():
    broker = BrokerState(1)
    assert broker.pool_started(0, 0, "pg-of-run-0")
    old = _running(broker)
    assert broker.pool_lost(0, "its supervisor process died") == (1, 1, "pg-of-run-0")  # the driver frees that group
    [lost] = broker.fetch("t1", 0)
    assert isinstance(lost, TrialLost) and "its supervisor process died" in lost.error
    # the old run's workers, not yet killed, go on: none of it reaches the trial, and they are told to stop
    assert not broker.post("t1", EpochResult({"epoch": 3}), old.ticket)  # (rank 0 then deletes its checkpoint)
    assert broker.fetch("t1", 0) == []
    assert broker.wait_decision("t1", 3, 0, old.ticket) == SHUTDOWN  # SHUTDOWN: it must not write final.json
    broker.submit("t1", REQUEST)  # the trial's trainable submits it again from its checkpoint
    assert broker.take(0, 0, generation=0) == SHUTDOWN  # the old run may not take it...
    assert not broker.pool_started(0, 0, "late-pg-of-run-0")  # ...nor start (it frees its own group and ends)
    assert broker.pool_started(0, 1, "pg-of-run-1")
    new = broker.take(0, 0, generation=1)  # the restarted supervisor's run takes it
    assert new.trial_id == "t1" and new.ticket != old.ticket
    assert not broker.post("t1", EpochResult({"epoch": 3}), old.ticket)
    assert broker.post("t1", EpochResult({"epoch": 3}), new.ticket)
    assert broker.fetch("t1", 0) == [EpochResult({"epoch": 3})]
    # an old rank's exception is not taken for the new run's: when the new run fails, its own reason is said
    broker.raised("t1", TrialFailed("the old run's collateral error"), old.ticket)
    broker.pool_crashed(0, "the new run's own error")
    [failed] = broker.fetch("t1", 0)
    assert isinstance(failed, TrialFailed) and "the new run's own error" in failed.error, failed
    assert broker.pool_lost(0, "again") == (0, 2, "pg-of-run-1")


def test_declaring_a_supervisor_dead_wakes_its_old_run_where_it_waits():
    broker = BrokerState(1)
    old = _running(broker)
    said = {}
    waits = [threading.Thread(target=lambda: said.update(decision=broker.wait_decision("t1", 1, 30, old.ticket))),
             threading.Thread(target=lambda: said.update(take=broker.take(0, 30, 0)))]
    for w in waits:
        w.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    broker.pool_lost(0, "died")
    for w in waits:
        w.join(10)
    assert said == {"decision": SHUTDOWN, "take": SHUTDOWN} and time.monotonic() - t0 < 5


def test_an_idle_pool_whose_supervisor_died_took_nothing():
    broker = BrokerState(2)
    assert broker.pool_lost(1, "gone") == (0, 1, "")  # (died before its run had a placement group)
    assert broker.shutdown() == [1]  # restarting until its next take()


def test_a_retry_drops_the_checkpoints_of_epochs_the_search_never_took(tmp_path):
    """A lost run may have written one whose result the broker then refused."""
    for epoch in (1, 2, 3):
        d = tmp_path / f"checkpoint_e{epoch:04d}"
        d.mkdir()
        (d / checkpoint_policy.META_FILE).write_text(json.dumps({"metrics": {"epoch": epoch}}))
    checkpoint_policy.drop_after(tmp_path, 2)
    assert checkpoint_policy.latest(tmp_path).name == "checkpoint_e0002"
    checkpoint_policy.drop_after(tmp_path, 0)
    assert checkpoint_policy.latest(tmp_path) is None
