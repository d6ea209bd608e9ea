#!/usr/bin/env python3
"""hftfarm entry point: ``python run.py <command> ...``. Thin; see pipeline/cli.py."""
import os
import sys

# Everything hftfarm writes (run directories, journals, reports, logs, plots, tokens) is a
# trading record: owner-only unless the operator loosens it afterwards.
os.umask(0o077)

# The kill switch must act while the box is busy trading: ahead of the stages it stops
# (only where the operator may raise priority, e.g. root or CAP_SYS_NICE).
if sys.argv[1:2] == ["kill"]:
    try:
        os.nice(-10)
    except OSError:
        pass

# Point numba's cache at this source tree before anything imports numba. The commands that
# only talk to the control socket skip it (it hashes the source tree, ~0.1-0.2 s) so that
# `run.py kill` acts at once.
if sys.argv[1:2] not in (["kill"], ["resume"], ["status"]):
    from pipeline import numba_cache

    numba_cache.configure()

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
