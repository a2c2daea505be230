"""Resolve what a search will run on what the cluster has: the profile with the flags' overrides,
GPU or CPU, GPUs per worker, how many trials at once. Refuses what can never run."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dfsearch.errors import DfsearchError

DRIVER_CPUS = 0.5  # each trial's Tune trainable (it only waits on its Train workers)
DRIVER_RESOURCE = "dfsearch_driver"  # a node that advertises it (the head) takes every trial's trainable


def driver_resources(cluster: dict) -> dict:
    """What each trial's Tune trainable asks for. On a cluster whose head advertises
    ``DRIVER_RESOURCE`` (``cluster.yaml``, ``k8s/raycluster.yaml`` do, with ``CPU: 0`` so that no
    training lands there): one unit of it, so the trainables live on the head, which no spot
    reclaim takes, and a lost worker node costs only the epochs since its trials' checkpoints.
    Elsewhere: ``DRIVER_CPUS`` CPUs on any node."""
    return {"CPU": 0, DRIVER_RESOURCE: 1} if cluster.get(DRIVER_RESOURCE, 0) >= 1 else {"CPU": DRIVER_CPUS}


@dataclass(frozen=True)
class Plan:
    profile: object         # search_space.Profile, overrides applied
    profile_name: str
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float  # 0 on CPU
    max_concurrent: int
    driver: dict            # what each trial's Tune trainable asks for (``driver_resources``)

    def describe(self) -> str:
        p = self.profile
        return (f"{p.num_samples} trials x <= {p.max_epochs} epochs, {p.workers_per_trial} workers/trial, "
                f"{self.max_concurrent} concurrent, {'GPU' if self.use_gpu else 'CPU'}")


def make_plan(spec, options, space, cluster: dict) -> Plan:
    """``spec``: the SearchSpec, ``options``: this run's Options, ``cluster``: Ray's resources."""
    from dfsearch.cluster import check_resources

    gpus = cluster.get("GPU", 0)
    use_gpu = options.gpus_per_worker > 0 if options.gpus_per_worker is not None else gpus > 0
    name = spec.profile or ("gpu" if use_gpu else "cpu")
    profile = space.profile(name)
    overrides = {k: v for k, v in dict(num_samples=spec.num_samples, max_epochs=spec.max_epochs,
                                       workers_per_trial=spec.workers_per_trial,
                                       grace_period=spec.grace_period).items() if v is not None}
    profile = profile.model_copy(update=overrides)
    if profile.grace_period > profile.max_epochs:
        profile = profile.model_copy(update={"grace_period": profile.max_epochs})
    gpw = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
    if use_gpu and gpw < 1 and profile.workers_per_trial > 1:
        # Ray would put the ranks of one trial on one GPU, and nccl refuses that at the first
        # collective ("Duplicate GPU detected"): every trial would fail after its start-up
        raise DfsearchError(
            f"--gpus-per-worker {gpw:g} with --workers-per-trial {profile.workers_per_trial}: the DDP ranks of a "
            f"trial would share one GPU, which nccl refuses; use --gpus-per-worker >= 1, or "
            f"--workers-per-trial 1 to pack several trials on a GPU")
    cpw = options.cpus_per_worker
    driver = driver_resources(cluster)
    check_resources(profile.workers_per_trial, use_gpu, cpw, gpw or 1.0, extra_cpus=driver["CPU"],
                    workers_flag="--workers-per-trial", gpu_flag="--gpus-per-worker", cluster=cluster)
    fit = int(cluster.get("CPU", 0) // (profile.workers_per_trial * cpw + driver["CPU"]))
    if use_gpu:
        fit = min(fit, int(gpus // (profile.workers_per_trial * gpw)))
    if DRIVER_RESOURCE in driver:
        fit = min(fit, int(cluster[DRIVER_RESOURCE]))
    concurrent = max(1, min(fit, options.max_concurrent or fit, profile.num_samples))
    return Plan(profile, name, use_gpu, cpw, gpw, concurrent, driver)


def local_cpus(space, spec, options) -> tuple[int, str | None]:
    """Logical CPUs for a local Ray: the cores, or enough for one trial (its workers plus a
    driver that mostly waits) on a smaller machine; with a note saying so."""
    cores = os.cpu_count() or 1
    workers = spec.workers_per_trial or max(p.workers_per_trial for p in space.profiles.values())
    need = workers * options.cpus_per_worker + DRIVER_CPUS
    n = max(cores, math.ceil(need))
    note = (f"local Ray with {n} logical CPUs on {cores} cores (a trial needs {need:g}: its workers plus a "
            f"{DRIVER_CPUS}-CPU driver that mostly waits)") if n > cores else None
    return n, note
