#!/usr/bin/env python3
"""hftfarm entry point: ``python run.py <command> ...``. Thin; see pipeline/cli.py."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
