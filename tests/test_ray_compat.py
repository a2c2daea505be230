"""Every assumption ``dfsearch.ray_compat`` makes about Ray's internals, checked against the
installed Ray. One of these failing after an upgrade means: re-verify that item, then widen
``VERIFIED_RAY``."""

import threading
import time

import pytest

from dfsearch import ray_compat

pytestmark = pytest.mark.xdist_group("ray-train")  # its own session Ray, beside the "ray" group


def test_the_installed_ray_is_inside_the_verified_range():
    import ray

    assert ray_compat.ray_is_verified(), (ray.__version__, ray_compat.VERIFIED_RAY)
    assert not ray_compat.ray_is_verified("2.59.0") and not ray_compat.ray_is_verified("2.61.0")


def test_the_speed_settings_are_ray_trains_own_environment_variables():
    import ray.train.v2._internal.constants as C

    names = {v for v in vars(C).values() if isinstance(v, str) and v.startswith("RAY_TRAIN_")}
    assert set(ray_compat.SPEED_ENV) <= names, set(ray_compat.SPEED_ENV) - names


def test_the_trainer_drops_exactly_the_placement_group_cleaner():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(cfg):
        pass

    stock = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1))._create_default_callbacks()
    ours = ray_compat.trainer_class()(loop, scaling_config=ScalingConfig(num_workers=1))._create_default_callbacks()
    names = [type(c).__name__ for c in stock]
    assert "PlacementGroupCleanerCallback" in names
    assert [type(c).__name__ for c in ours] == [n for n in names if n != "PlacementGroupCleanerCallback"]


def test_tune_stops_gracefully_on_its_stop_signal_and_only_listens_while_it_runs(ray_local, tmp_path, monkeypatch):
    """``interrupt_tune`` while ``fit()`` runs: the trial is stopped before its end, ``fit()``
    returns, and the experiment state is there to restore (what ``--resume`` needs)."""
    from ray import tune

    monkeypatch.setenv(ray_compat.TUNE_NO_SIGINT_ENV, "1")

    beat = tmp_path / "beat"

    def slow(config):
        for i in range(200):
            tune.report({"i": i + 1})
            beat.write_text(str(i + 1))
            time.sleep(0.2)

    listened = []

    def interrupt():
        while not (ray_compat.tune_listens() and beat.exists() and int(beat.read_text() or 0) >= 3):
            time.sleep(0.1)
        listened.append(True)
        ray_compat.interrupt_tune()

    ray_compat.forget_tune_listener()  # what an earlier fit() in this process left
    assert not ray_compat.tune_listens()
    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.time()
    grid = tune.Tuner(tune.with_resources(slow, {"CPU": 0.5}),
                      run_config=tune.RunConfig(name="stop", storage_path=str(tmp_path), verbose=0)).fit()
    assert listened and time.time() - t0 < 60
    assert grid[0].metrics["i"] < 200  # stopped, not finished
    assert tune.Tuner.can_restore(str(tmp_path / "stop"))
    assert ray_compat.tune_listens()  # and Tune leaves it installed: hence forget_tune_listener
    ray_compat.forget_tune_listener()


def test_a_dead_worker_is_told_apart_from_the_trial_s_own_exception():
    """``worker_lost`` reads Ray Train's failure types: a rank's own exception is the trial's; a
    dead or unreachable worker process, a survivor's collective failing on its lost peer, a dead
    node or controller, a preemption is not. ``startup_waiting``: no room to start, nothing lost."""
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import (UserExceptionWithTraceback, WorkerGroupStartupTimeoutError,
                                                   WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError)
    from ray.train.v2._internal.execution.worker_group.poll import WorkerGroupPollStatus, WorkerStatus
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    own = RuntimeError("the trial's bug")
    collateral = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:14773")
    dead = WorkerHealthCheckFailedError("worker 1 died", ActorDiedError())
    # what Train's controller records: the trial's exceptions unwrapped, a dead worker's health check wrapped
    polled = WorkerGroupPollStatus({0: WorkerStatus(False, UserExceptionWithTraceback(own, "Traceback ...")),
                                    1: WorkerStatus(True)}).get_worker_group_error()
    assert polled.worker_failures == {0: own} and not ray_compat.worker_lost(polled)
    assert not ray_compat.worker_lost(WorkerGroupError("x", {0: ActorDiedError()}))  # raised by the trial's code
    assert ray_compat.worker_lost(WorkerGroupError("x", {0: collateral, 1: dead}))
    assert ray_compat.worker_lost(WorkerGroupError("x", {0: collateral}))  # polled before the peer's health check
    assert ray_compat.worker_lost(WorkerGroupError("x", {1: WorkerHealthCheckTimeoutError("hung")}))
    assert ray_compat.worker_lost(ActorDiedError())  # the run's controller went with its node
    assert ray_compat.worker_lost(ControllerError(ActorDiedError()))
    cannot_start = ControllerError(WorkerGroupStartupTimeoutError(2))
    assert not ray_compat.worker_lost(cannot_start) and ray_compat.startup_waiting(cannot_start)
    assert not ray_compat.startup_waiting(polled)
    assert not ray_compat.worker_lost(ValueError("x")) and not ray_compat.worker_lost(None)
