"""A throwaway PostgreSQL server for tests and ``run.py bench sink``: Debian's postgresql
package (initdb / pg_ctl under /usr/lib/postgresql/<v>/bin), a data directory and a Unix socket
in a temp dir, no TCP at all (listen_addresses = ''), run as ``nobody`` when we are root
(initdb refuses root). ``stop()`` stops it and removes the directory: nothing is left behind.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.base = Path(tempfile.mkdtemp(prefix="hftfarm-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        self.as_nobody = os.geteuid() == 0
        if self.as_nobody:
            import pwd

            nobody = pwd.getpwnam("nobody")
            for p in (self.base, self.sock):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
            os.chmod(self.base, 0o711)
        self.running = False

    @property
    def dsn(self) -> str:
        return f"host={self.sock} dbname=postgres user=hft connect_timeout=3"

    def _run(self, *args, check=True):
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_nobody:
            cmd = ["runuser", "-u", "nobody", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120,
                              cwd=self.base)

    def init(self) -> "PgServer":
        self._run("initdb", "-D", str(self.data), "-U", "hft", "-A", "trust", "--no-sync",
                  "-E", "UTF8")
        return self

    def start(self) -> None:
        opts = (f"-k {self.sock} -c listen_addresses='' -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off -c shared_buffers=64MB")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "log"),
                  "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                      check=False)
            self.running = False

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        self.init()
        self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False
