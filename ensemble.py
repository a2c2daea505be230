#!/usr/bin/env python3
"""Build a greedy (Caruana) ensemble from a search/train run: ``python ensemble.py --help``."""

import sys

from dfsearch.ensemble_cli import main

if __name__ == "__main__":
    sys.exit(main())
