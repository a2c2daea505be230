"""The one exception type users see for bad input.

Every message names the thing that is wrong (file, field, value) and what would be accepted.
Commands catch it at the top level and print it without a traceback.
"""


class DfsearchError(Exception):
    """Bad input or an impossible request, detected before expensive work starts."""
