#!/usr/bin/env python
"""Entry point: `python run_search.py --space all_models` (see `--help`)."""
import sys

from dfsearch.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
