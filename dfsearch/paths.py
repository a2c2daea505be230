"""Where dfsearch keeps things on this machine: one place for every cache and default folder.

* ``cache_dir()``: ``$DFSEARCH_CACHE``, default ``~/.cache/dfsearch``; holds the embedded benchmark
  (``synth_dir``) and the local staging copies of URI run folders (``staging_root``);
* ``SPACES_DIR``: the shipped search spaces (``search_spaces/*.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def cache_dir() -> Path:
    return Path(os.environ.get("DFSEARCH_CACHE", Path.home() / ".cache" / "dfsearch"))


def staging_root() -> Path:
    """Parent of the local staging folders of URI run folders (``dfsearch.remote.staging_dir``)."""
    return cache_dir() / "runs"
