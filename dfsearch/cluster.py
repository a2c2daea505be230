"""Ray plumbing shared by every command: start or join Ray, refuse what a cluster can never run,
and the ``ScalingConfig`` of a trial. Driver side only; imports Ray lazily, so a command can check
its flags (``check_address``) before paying for Ray."""

from __future__ import annotations

import os
import socket

from dfsearch.errors import DfsearchError

ADDRESS_TIMEOUT_S = 5.0
START_A_CLUSTER = "start one with `ray start --head` or `ray up cluster.yaml`, or leave --address out for a local Ray"


def starts_local_ray(address: str | None) -> bool:
    """No ``--address`` and no ``RAY_ADDRESS`` (which ``ray job submit`` sets): a fresh local Ray,
    never one that ``ray start`` left running on this machine, or its stale address file, which
    plain ``ray.init()`` would join (and then refuse ``num_cpus``)."""
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def check_address(address: str | None) -> None:
    """``--address HOST:PORT`` (or ``ray://HOST:PORT``) where nothing answers is an error within
    ``ADDRESS_TIMEOUT_S``: ``ray.init`` would retry for minutes, printing connection warnings."""
    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise DfsearchError(f"--address {address}: expected HOST:PORT (the head node's GCS port, 6379 unless "
                            f"changed), ray://HOST:PORT (Ray Client, port 10001) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as e:
        raise DfsearchError(f"--address {address}: no Ray cluster answers there ({type(e).__name__}: {e}); "
                            f"{START_A_CLUSTER}") from None


def init_ray(address: str | None = None, num_cpus: int | None = None,
             include_dashboard: bool | None = None, runtime_env: dict | None = None) -> bool:
    """Start (or connect to) Ray once, with ``ray_compat.SPEED_ENV`` in every worker. True when
    this call did (the caller shuts it down: workers' late log lines then cannot reach a ``--json``
    stdout after the report), False when Ray was already up. ``runtime_env``: merged into Ray's
    (its ``env_vars`` with ours). A command that takes ``--address`` checks it first
    (``check_address``, before any expensive work)."""
    import ray

    from dfsearch import ray_compat

    if ray.is_initialized():
        return False
    ray_compat.warn_if_unverified()
    for k, v in ray_compat.SPEED_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    env = dict(runtime_env or {})
    env["env_vars"] = {**{k: os.environ[k] for k in ray_compat.SPEED_ENV}, **env.get("env_vars", {})}
    local = starts_local_ray(address)
    kw = dict(address="local" if local else address, log_to_driver=True, configure_logging=True,
              logging_level="ERROR", runtime_env=env)
    if local and num_cpus is not None:
        kw["num_cpus"] = num_cpus
    if local and include_dashboard is not None:
        kw["include_dashboard"] = include_dashboard
    try:
        ray.init(**kw)
    except ConnectionError as e:  # auto: no cluster here; HOST:PORT: something answers, Ray cannot connect
        hint = START_A_CLUSTER
        if address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("something answers there: a Ray cluster with token authentication (`ray start` turns it on "
                    "where ~/.ray/auth_token exists, which any local Ray writes) needs RAY_AUTH_MODE=token and "
                    "its token (~/.ray/auth_token, or RAY_AUTH_TOKEN) for an explicit address; or run on the "
                    "head node with --address auto")
        raise DfsearchError(f"--address {address}: {str(e).strip().splitlines()[0]} ({hint})") from None
    except RuntimeError as e:  # Ray refuses a driver whose Ray or Python version differs from the cluster's
        if not str(e).startswith("Version mismatch"):
            raise
        versions = " ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise DfsearchError(
            f"--address {address}: version mismatch: {versions}. Ray connects a driver only to a cluster of the "
            f"same Ray and Python version: run the search on the cluster (`ray job submit --address "
            f"http://HEAD:8265 --working-dir . -- python run_search.py --address auto ...`, or `ray attach` and "
            f"run it there), or install the cluster's versions here") from None
    return True


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_resources(workers: int, use_gpu: bool, cpus_per_worker: float = 1.0,
                    gpus_per_worker: float = 1.0, extra_cpus: float = 0.0,
                    workers_flag: str = "--workers", gpu_flag: str = "--gpu", cluster: dict | None = None) -> None:
    """Raise DfsearchError when the cluster (``cluster``: its resources, default the running Ray's)
    can never give what a run asks for, instead of the endless wait Ray would otherwise start.
    The flags named are the calling command's own."""
    if workers < 1:
        raise DfsearchError(f"{workers_flag} {workers}: need at least 1")
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    need_cpu = workers * cpus_per_worker + extra_cpus
    if need_cpu > cpus:
        raise DfsearchError(
            f"{workers_flag} {workers} needs {need_cpu:g} CPUs ({cpus_per_worker:g} per worker"
            f"{f' + {extra_cpus:g} for the trial driver' if extra_cpus else ''}) but this Ray cluster has "
            f"{cpus:g}; use {workers_flag} <= {int((cpus - extra_cpus) // cpus_per_worker)} or a bigger cluster (--address)")
    if use_gpu and workers * gpus_per_worker > gpus:
        raise DfsearchError(
            f"{workers_flag} {workers} x {gpus_per_worker:g} GPU(s) per worker needs "
            f"{workers * gpus_per_worker:g} GPUs but this Ray cluster has {gpus:g}"
            + (f"; drop {gpu_flag} to train on CPUs" if gpus == 0
               else f"; use {gpu_flag} <= {gpus:g}" if gpus_per_worker > gpus
               else f"; use {workers_flag} <= {int(gpus // gpus_per_worker)}"))


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0):
    from ray.train import ScalingConfig

    res = {"CPU": cpus_per_worker}
    if use_gpu:
        res["GPU"] = gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=res)


def free_placement_group(pg_hex: str) -> bool:
    """Remove the placement group ``pg_hex`` (its ``id.hex()``) unless it is gone already; True
    when this call removed it. Needed where a Train run ended without its controller cleaning up:
    Ray scopes a placement group to the job, not to the actor that made it, so a killed controller's
    worker group keeps its CPUs/GPUs reserved until the search ends."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    pg = PlacementGroup(ray.PlacementGroupID.from_hex(pg_hex))
    if placement_group_table(pg).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(pg)
    return True
