"""Weights & Biases logging that never gets in the way.

Every function here is safe to call unconditionally: with ``run=None`` (W&B disabled, or a run that
could not start) they do nothing, and no wandb failure ever raises -- it becomes one warning on
stderr and the command carries on without logging.

``resolve_mode(requested) -> "online" | "offline" | "disabled"``
    ``online`` only when credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B
    host) and the server answers (``server_error``: one TCP connect, ``PROBE_TIMEOUT_S``);
    otherwise ``offline``, said once per process on stderr with the ``wandb sync`` to run later,
    so an unreachable server costs one probe, not an init timeout per run.
``start_run(mode, project, group, job_type, name, config, dir) -> run | None``
    ``wandb.init`` with a short ``init_timeout``; offline run files land in ``<dir>/wandb/``.
``log``, ``log_table``, ``log_images``, ``finish``
    Thin wrappers around ``run.log`` / ``wandb.Table`` / ``wandb.Image`` / ``run.finish``.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

MODES = ("online", "offline", "disabled")
INIT_TIMEOUT_S = 15.0  # a server that answers the probe but not wandb.init: at most this long, then offline
PROBE_TIMEOUT_S = 3.0
DEFAULT_HOST = "api.wandb.ai"

_said_offline = False  # the "no credentials" notice is printed once per process


def _warn(message: str) -> None:
    print(f"W&B: warning: {message}", file=sys.stderr)


def has_credentials() -> bool:
    """True when ``WANDB_API_KEY`` is set or the netrc file has an entry for the W&B host
    (``WANDB_BASE_URL``'s host, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "")).hostname or DEFAULT_HOST
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_error(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the W&B server (``WANDB_BASE_URL``, default https://api.wandb.ai) accepts a TCP
    connection within ``timeout``; else why not. Behind a proxy (``HTTPS_PROXY`` / ``HTTP_PROXY``)
    a direct connection says nothing: no probe (None), W&B's own init timeout applies."""
    import socket

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None

    url = urlparse(os.environ.get("WANDB_BASE_URL") or f"https://{DEFAULT_HOST}")
    host, port = url.hostname or DEFAULT_HOST, url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as e:
        return f"{host}:{port}: {type(e).__name__}: {e}"


def _offline_notice(dir, why: str) -> None:
    global _said_offline
    if not _said_offline:
        where = Path(dir) / "wandb" if dir is not None else Path("wandb")
        print(f"W&B: {why}, logging offline to {where} (upload later: `wandb sync {where}/offline-run-*`)",
              file=sys.stderr)
        _said_offline = True


def resolve_mode(requested: str | None, dir: str | Path | None = None) -> str:
    """The W&B mode to use.

    ``requested`` (a flag value) wins, else ``WANDB_MODE`` from the environment, else ``online``
    when credentials exist and ``offline`` when not. ``online`` without credentials becomes
    ``offline``, with a one-time notice on stderr naming where the runs go (``dir``/wandb).
    """
    global _said_offline
    aliases = {"dryrun": "offline", "run": "online"}
    mode = aliases.get(requested, requested)
    if mode is not None and mode not in MODES:
        from dfsearch.errors import DfsearchError

        raise DfsearchError(f"W&B mode {requested!r} is not one of {list(MODES)}")
    if mode is None and os.environ.get("WANDB_MODE"):
        env = os.environ["WANDB_MODE"]
        mode = aliases.get(env, env)
        if mode not in MODES:
            _warn(f"ignoring WANDB_MODE={env!r} (not one of {list(MODES)})")
            mode = None
    if mode in ("offline", "disabled"):
        return mode
    if not has_credentials():
        _offline_notice(dir, "no credentials found")
        return "offline"
    if (why := server_error()) is not None:
        _offline_notice(dir, f"the server cannot be reached ({why})")
        return "offline"
    return "online"


def start_run(mode: str, project: str, group: str | None, job_type: str, name: str | None,
              config: dict, dir: str | Path):
    """A wandb run, or None when ``mode`` is "disabled" or wandb fails in any way (warned on
    stderr). ``dir`` is created; wandb writes its run folder under ``dir/wandb/``."""
    if mode == "disabled":
        return None
    try:
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        return wandb.init(
            mode=mode, project=project, group=group, job_type=job_type, name=name, config=config,
            dir=str(dir), reinit="create_new",
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, quiet=True, console="off"),
        )
    except Exception as e:  # network, auth, bad settings, a broken install: never fatal
        if mode == "online":  # the server went away or refused: keep this run offline, nothing lost
            _warn(f"could not start an online run ({type(e).__name__}: {e}); keeping it offline")
            return start_run("offline", project, group, job_type, name, config, dir)
        _warn(f"could not start a {mode} run ({type(e).__name__}: {e}); continuing without W&B "
              f"logging (use --wandb-mode disabled)")
        return None


def log(run, data: dict, step: int | None = None) -> None:
    """``run.log(data)``; None values are dropped (W&B cannot chart them)."""
    if run is None:
        return
    try:
        run.log({k: v for k, v in data.items() if v is not None}, step=step)
    except Exception as e:
        _warn(f"log failed ({type(e).__name__}: {e})")


def update_config(run, data: dict) -> None:
    """``run.config.update(data)`` (values known only once the trial runs); a failure only warns."""
    if run is None:
        return
    try:
        run.config.update(data, allow_val_change=True)
    except Exception as e:
        _warn(f"config update failed ({type(e).__name__}: {e})")


def log_table(run, key: str, dataframe) -> None:
    """Log a pandas DataFrame as a W&B table under ``key``."""
    if run is None:
        return
    try:
        import wandb

        run.log({key: wandb.Table(dataframe=dataframe)})
    except Exception as e:
        _warn(f"table {key!r} not logged ({type(e).__name__}: {e})")


def log_images(run, images: dict) -> None:
    """Log ``{key: png_path}`` as W&B images; missing files are skipped with a warning."""
    if run is None:
        return
    try:
        import wandb

        found = {k: wandb.Image(str(p)) for k, p in images.items() if Path(p).is_file()}
        for k in sorted(set(images) - set(found)):
            _warn(f"image {k!r} not logged: {images[k]} does not exist")
        if found:
            run.log(found)
    except Exception as e:
        _warn(f"images not logged ({type(e).__name__}: {e})")


def finish(run) -> None:
    """``run.finish()``; never raises."""
    if run is None:
        return
    try:
        run.finish()
    except Exception as e:
        _warn(f"finishing the run failed ({type(e).__name__}: {e})")
