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
``write_dataset_manifest``, ``use_dataset``, ``log_artifact``
    The lineage dataset -> trial (its best checkpoint, a "model" artifact) -> ensemble (an
    "ensemble" artifact): real input edges online, names in the artifacts' metadata offline.
"""

from __future__ import annotations

import json
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
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True, console="off"),  # dfsearch says where runs go
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


def log_image_table(run, key: str, dataframe, images: dict, side: int = 128) -> None:
    """``dataframe`` as a W&B table under ``key`` with an ``image`` column first: ``images`` maps a
    row's index to an image file, shown as a ``side``-px thumbnail (a file that cannot be read
    leaves the cell empty)."""
    if run is None:
        return
    try:
        import wandb
        from PIL import Image

        def thumb(path):
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((side, side))
                    return wandb.Image(im)
            except (OSError, TypeError):
                return None

        table = wandb.Table(columns=["image", *map(str, dataframe.columns)])
        for i, row in dataframe.iterrows():
            table.add_data(thumb(images[i]) if i in images else None, *row.tolist())
        run.log({key: table})
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


def log_artifact(run, name: str, kind: str, files: dict, metadata: dict, uses: list = (),
                 by_reference: bool = False) -> str | None:
    """Log ``files`` (``{name in the artifact: local file or folder}``) as a W&B artifact of type
    ``kind`` ("dataset", "model", "ensemble") of this run, its ``metadata`` saying where it came
    from; returns the artifact's name or None.

    ``by_reference``: the files are recorded as ``file://`` references (path, size, checksum),
    not uploaded: a trial's checkpoint stays in the run folder (or its bucket), and ending a trial
    never waits on an upload of hundreds of MB inside Tune's event loop.

    Lineage: online, ``uses`` (artifact names, e.g. the trials' models an ensemble was built
    from) become the run's inputs, so W&B draws dataset -> trial -> ensemble; each link on its
    own (one the server does not have, e.g. models of a search that ran offline, is warned and
    skipped, the artifact still logged). W&B refuses ``use_artifact`` offline; there the same
    names are kept in ``metadata["inputs"]``, which ``wandb sync`` uploads with the artifact."""
    if run is None:
        return None
    try:
        import wandb

        art = wandb.Artifact(name, type=kind, metadata={**metadata, "inputs": list(uses)})
        for key, path in files.items():
            path = Path(path).resolve()
            if by_reference and path.exists():
                art.add_reference(path.as_uri(), name=key)
            elif path.is_dir():
                art.add_dir(str(path), name=key)
            elif path.is_file():
                art.add_file(str(path), name=key)
    except Exception as e:
        _warn(f"artifact {name!r} not logged ({type(e).__name__}: {e})")
        return None
    if not run.offline:  # see the docstring: lineage edges need the server
        for used in uses:
            try:
                run.use_artifact(f"{used}:latest")
            except Exception as e:
                _warn(f"artifact {name!r}: its input {used!r} not recorded ({type(e).__name__}: {e})")
    try:
        run.log_artifact(art)
        return name
    except Exception as e:
        _warn(f"artifact {name!r} not logged ({type(e).__name__}: {e})")
        return None


DATASET_FILE = "dataset.json"


def write_dataset_manifest(index, run_dir: str | Path) -> str:
    """``run_dir/dataset.json``: what the run was trained on (root, layout, counts, the index's
    digest); returns the name of the W&B dataset artifact that carries it (``dataset-<folder>-<digest>``):
    the same files give the same name in every search."""
    manifest = {"root": index.root, "layout": index.layout, "counts": index.counts(), "digest": index.digest(),
                "skipped": len(index.skipped)}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / DATASET_FILE).write_text(json.dumps(manifest, indent=2))
    return _dataset_name(manifest)


def _dataset_name(manifest: dict) -> str:
    return artifact_name("dataset", Path(manifest["root"]).name, manifest["digest"][:8])


def log_dataset(run, run_dir: str | Path) -> None:
    """The run folder's dataset manifest as a "dataset" artifact of ``run`` (the search's run),
    so that it exists offline too, where no trial run could record it as an input."""
    path = Path(run_dir) / DATASET_FILE
    if run is None or not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
        name = _dataset_name(manifest)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged manifest must not fail a finished search
        _warn(f"dataset artifact not logged: {path} unreadable ({type(e).__name__}: {e})")
        return
    log_artifact(run, name, "dataset", {DATASET_FILE: path}, manifest)


def dataset_root(run_dir: str | Path) -> str | None:
    """The dataset folder a run was trained on (its manifest), or None when it has none."""
    try:
        return json.loads((Path(run_dir) / DATASET_FILE).read_text())["root"]
    except (OSError, ValueError, KeyError):
        return None


def use_dataset(run, name: str, manifest: str | Path) -> None:
    """Online: the dataset artifact (``write_dataset_manifest``) as this run's input (logged
    once, W&B keeps one version per content); offline W&B cannot record an input, so the name
    goes into the run's config (``dataset_artifact``) and the models' metadata instead."""
    if run is None:
        return
    try:
        if run.offline:
            run.config.update({"dataset_artifact": name}, allow_val_change=True)
            return
        import wandb

        art = wandb.Artifact(name, type="dataset", metadata=json.loads(Path(manifest).read_text()))
        art.add_file(str(manifest), name=DATASET_FILE)
        run.use_artifact(art)
    except Exception as e:
        _warn(f"dataset artifact {name!r} not used ({type(e).__name__}: {e})")


def model_artifact(group: str, trial_id: str) -> str:
    """The W&B artifact name of a trial's best checkpoint (an ensemble names its inputs by it)."""
    return artifact_name("model", group, trial_id)


def artifact_name(*parts: str) -> str:
    """A W&B artifact name from ``parts``: letters, digits, ``-``, ``_`` and ``.`` only."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p)).strip("-")[:128]


def finish(run) -> None:
    """``run.finish()``; never raises."""
    if run is None:
        return
    try:
        run.finish()
    except Exception as e:
        _warn(f"finishing the run failed ({type(e).__name__}: {e})")
