#!/usr/bin/env python3
"""hftfarm entry point: ``python run.py <command> ...``. Thin; see pipeline/cli.py."""
import os
import sys

# Everything hftfarm writes (run directories, journals, reports, logs, plots, tokens) is a
# trading record: owner-only unless the operator loosens it afterwards.
os.umask(0o077)

# The kill switch must act while the box is busy trading, ahead of the stages it stops: for its
# few milliseconds it runs SCHED_FIFO above any stage (realtime_priority tops out at 98), else
# at nice -10. A nice value alone barely helps: the stages run in their own session, and with
# the kernel's autogroups CPU time is shared between sessions before nice counts.
if sys.argv[1:2] == ["kill"]:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
    except (OSError, AttributeError):
        try:
            os.nice(-10)
        except OSError:
            pass
    from pipeline.killswitch import send_kill

    _sent = send_kill(sys.argv[2:], os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "config.toml"))
    if _sent is not None:
        sys.exit(_sent)

# Point numba's cache at the key of this tree's kernel sources before anything imports numba.
# The commands that only talk to the control socket skip it (it reads and hashes the sources,
# tens of ms; parsing their imports, once per changed file, more) so that `run.py kill` acts at
# once.
if sys.argv[1:2] not in (["kill"], ["resume"], ["status"], ["set"]):
    from pipeline import numba_cache

    numba_cache.configure()

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
