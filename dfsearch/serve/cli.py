"""``dfsearch serve``: the web app (Gradio) on a local port.

    dfsearch serve --ensemble runs/x/ensemble/ensemble.json [--host 127.0.0.1] [--port 7860]
                   [--share] [--device cpu|cuda]

Checked before torch, Gradio or any model loads, in this order: the port is free on the host (a
bind test, as the server will bind it; taken: the error names it and a free one), Gradio is
installed (else how to install it), then the ensemble loads as ``dfsearch predict`` loads it (its
errors). ``--share`` (Gradio's public link through its relay) only when asked. Gradio's analytics
are switched off: nothing leaves the machine unless ``--share`` is given.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys

from dfsearch.errors import DfsearchError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
SUGGEST_RANGE = 100  # ports above the taken one searched for a free one to suggest


def _bind(host: str, port: int) -> None:
    """Bind and listen on ``(host, port)`` and let go; OSError when that is impossible. SO_REUSEADDR
    as uvicorn sets it, so that a port in TIME_WAIT (a server just stopped) counts as free, as it is."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)


def check_port(host: str, port: int) -> None:
    """DfsearchError naming the port and a free one to try when ``port`` cannot be bound on ``host``."""
    if not 0 < port < 65536:
        raise DfsearchError(f"--port {port}: accepted: 1 to 65535")
    try:
        _bind(host, port)
        return
    except socket.gaierror as e:
        raise DfsearchError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    except PermissionError:
        raise DfsearchError(f"port {port} on {host}: not allowed for this user (ports below 1024 need root); "
                            f"try --port {DEFAULT_PORT}") from None
    except OSError as e:
        in_use = e.errno == errno.EADDRINUSE
        if not in_use:
            raise DfsearchError(f"port {port} on {host}: cannot listen there ({e.strerror})") from None
    free = next((p for p in range(port + 1, min(port + SUGGEST_RANGE, 65535) + 1) if _free(host, p)), None)
    hint = f"try --port {free}" if free else f"no free port in {port + 1}-{port + SUGGEST_RANGE} either"
    raise DfsearchError(f"port {port} on {host} is in use; {hint}")


def _free(host: str, port: int) -> bool:
    try:
        _bind(host, port)
        return True
    except OSError:
        return False


MAX_UPLOAD = "50mb"  # per file: a face image is far smaller; a bigger upload is refused by Gradio, not decoded


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` as a subcommand of ``dfsearch``."""
    p = subparsers.add_parser("serve", help="a web app: upload images, get P(fake), each member's vote, a heatmap, "
                                            "and the run's report")
    p.add_argument("--ensemble", required=True, help="ensemble.json written by the ensemble command (a path, or "
                                                     "a URI: s3://.../<run>/ensemble/ensemble.json), as for predict")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine "
                                                        f"only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--share", action="store_true", help="also ask Gradio for a public *.gradio.live link "
                                                        "(through Gradio's relay; off by default)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Serve until Ctrl-C (exit 130 through ``run_command``)."""
    check_port(args.host, args.port)  # first: milliseconds, before torch and the models
    if importlib.util.find_spec("gradio") is None:
        raise DfsearchError("dfsearch serve needs Gradio, which is not installed here: pip install 'dfsearch[serve]' "
                            "(or pip install 'gradio>=6,<7')")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: nothing phones home

    from dfsearch.serve.app import CSS, build
    from dfsearch.serve.classify import load

    ens = load(args.ensemble, args.device)
    print(f"dfsearch serve: {ens.path}: {ens.summary()}; device {ens.device}", flush=True)
    if args.share or args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dfsearch serve: warning: {'a public link' if args.share else f'--host {args.host}'}: anyone who can "
              f"reach it can upload images and read the run's report; there is no login", file=sys.stderr)
    demo = build(ens)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                    show_error=True, quiet=True, css=CSS, max_file_size=MAX_UPLOAD)
    except OSError as e:  # taken between the check and now
        raise DfsearchError(f"port {args.port} on {args.host}: {e}") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"dfsearch serve: running on http://{host}:{args.port}/"
          + (f" and {demo.share_url}" if args.share and demo.share_url else "") + " (Ctrl-C to stop)", flush=True)
    demo.block_thread()
    return 0
