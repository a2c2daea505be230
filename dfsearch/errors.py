"""The one exception type users see for bad input.

Every message names the thing that is wrong (file, field, value) and what would be accepted.
Commands catch it at the top level and print it without a traceback.
"""


class DfsearchError(Exception):
    """Bad input or an impossible request, detected before expensive work starts."""


def run_command(prog: str, fn, *args, interrupted: str = "interrupted") -> int:
    """Run a command's body: a DfsearchError is printed as ``PROG: error: ...`` (exit 2, no
    traceback), Ctrl-C as ``PROG: <interrupted>`` (exit 130)."""
    import sys

    try:
        return int(fn(*args) or 0)
    except DfsearchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
