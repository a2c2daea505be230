"""Fault injection for tests, from outside the production code.

Ray runs ``install`` in every worker process it starts (``worker_process_setup_hook``, set by the
``ray_local`` fixture); it wraps, as soon as they are imported, ``dfsearch.worker.train_one_epoch``
(a trial that raises or whose loss goes NaN), ``dfsearch.pool.runner.pool_loop`` (a pool that
can never start) and ``dfsearch.pool.runner.run_trial`` (a pool whose trials write to a disk the
driver cannot see, as on another node). What to inject is read, at each call, from the JSON file
named by ``$DFSEARCH_TEST_FAULTS`` (the ``faults`` fixture writes it):

* ``{ARCH or CANDIDATE: {"kind": "raise", "after_epoch": N, "once": true}}``: raise when epoch
  N + 1 starts (N = 0: before any training); ``once``: only the first time (a marker file), so
  that a retried run goes through;
* ``{ARCH or CANDIDATE: {"kind": "die", "after_epoch": N, "rank": R, "once": true}}``: rank R's
  worker process kills itself with SIGKILL when epoch N + 1 starts (``kill -9``: no exception, no
  cleanup, as the OOM killer or a reclaimed node leaves it);
* ``{ARCH or CANDIDATE: {"kind": "supervisor", "after_epoch": N}}``: rank 0 kills (SIGKILL) its
  pool's supervisor process (``ray::_run_pool``, a Ray task on the driver's node) when epoch
  N + 1 starts, once in the whole test (marker ``fired-supervisor``);
* ``{ARCH or CANDIDATE: [fault, ...]}``: each of them;
* ``{ARCH or CANDIDATE: {"kind": "nan"}}``: every epoch's training loss is NaN;
* ``{"pool": {"kind": "raise"}}``: every pool's workers raise at start;
* ``{"pool": {"kind": "elsewhere", "root": DIR}}``: trials write their folders under DIR.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

ENV = "DFSEARCH_TEST_FAULTS"


def read() -> dict:
    path = os.environ.get(ENV)
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def _for(*keys) -> dict | None:
    faults = read()
    return next((faults[k] for k in keys if k in faults), None)


def _all_for(*keys) -> list[dict]:
    fault = _for(*keys)
    return fault if isinstance(fault, list) else [fault] if fault else []


def _kill_supervisors() -> None:
    """SIGKILL the pool supervisors of this test process's Ray: the ``ray::_run_pool`` processes
    whose environment names this faults file (the other test process's Ray names its own)."""
    ours = f"{ENV}={os.environ[ENV]}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::_run_pool") \
                    and ours in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass  # gone, or not ours to read


def _fire(fault: dict, t, epoch: int) -> None:
    kind = fault.get("kind", "raise")
    if kind not in ("raise", "die", "supervisor") or epoch != fault.get("after_epoch", 1) \
            or t.rank != fault.get("rank", 0 if kind == "supervisor" else t.rank):
        return
    marker = Path(os.environ[ENV]).with_name("fired-supervisor" if kind == "supervisor" else f"fired-{t.candidate}")
    if (fault.get("once") or kind == "supervisor") and marker.exists():
        return
    marker.touch()
    if kind == "supervisor":
        _kill_supervisors()
        time.sleep(60)  # an epoch on real data: Ray ends this run (its owner died) long before it would report
    elif kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise RuntimeError(f"injected fault after epoch {epoch}")


def _wrap_worker(mod) -> None:
    real = mod.train_one_epoch

    def train_one_epoch(t, epoch):
        faults = _all_for(t.candidate, t.cfg.arch)
        for fault in faults:
            _fire(fault, t, epoch)
        out = real(t, epoch)
        if any(f.get("kind") == "nan" for f in faults):
            out = {**out, "train_loss": float("nan")}
        return out

    mod.train_one_epoch = train_one_epoch


def _wrap_runner(mod) -> None:
    real_loop, real_trial = mod.pool_loop, mod.run_trial

    def pool_loop(cfg):
        if (_for("pool") or {}).get("kind") == "raise":
            raise RuntimeError("injected pool fault")
        return real_loop(cfg)

    def run_trial(broker, job, index, rank):
        fault = _for("pool") or {}
        if fault.get("kind") == "elsewhere":
            here = Path(fault["root"]) / job.trial_id
            resume = str(here / Path(job.request.resume).name) if job.request.resume else None
            job = dataclasses.replace(job, request=dataclasses.replace(job.request, trial_dir=str(here), resume=resume))
        return real_trial(broker, job, index, rank)

    mod.pool_loop, mod.run_trial = pool_loop, run_trial


WRAPPERS = {"dfsearch.worker": _wrap_worker, "dfsearch.pool.runner": _wrap_runner}


class _Patcher(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules in ``WRAPPERS`` as usual, then wraps them (nothing is imported early:
    Ray's own processes do not pay for torch)."""

    def find_spec(self, name, path=None, target=None):
        if name not in WRAPPERS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        self._real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        self._real.exec_module(module)
        WRAPPERS[module.__name__](module)


def install() -> None:
    """Ray's ``worker_process_setup_hook`` (and the test process's own, for in-process runs)."""
    if any(isinstance(f, _Patcher) for f in sys.meta_path):
        return
    for name, wrap in WRAPPERS.items():
        if name in sys.modules:
            wrap(sys.modules[name])
    sys.meta_path.insert(0, _Patcher())
