#!/usr/bin/env python3
"""hftfarm entry point: ``python run.py <command> ...``. Thin; see pipeline/cli.py."""
import sys

from pipeline import numba_cache

numba_cache.configure()  # before anything imports numba

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
