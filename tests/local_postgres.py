"""A throwaway PostgreSQL server for the results store's tests, as local_slurm.py is for Slurm.

Debian's ``postgresql`` package (installed by .ci/run) gives initdb and pg_ctl under
/usr/lib/postgresql/<version>/bin. The server runs as the ``postgres`` user (it refuses root), in a
temporary folder, listening only on a Unix socket in that folder (no TCP port, so two test runs
cannot meet), with trust authentication and fsync off: a test server, not a place for data.
`stop` stops this server only, by the PID in its postmaster.pid, and removes the folder.

``python -m tests.local_postgres`` starts one, prints its URL, and stops it on Enter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "postgres"
DATABASE = "mpt_suite_test"


def server_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why a server cannot be started here, or None."""
    if server_bin() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user (Debian's postgresql package creates it)"
    if os.geteuid() != 0:
        return "starting the server as the postgres user needs root"
    return None


class LocalPostgres:
    def __init__(self) -> None:
        self.bin = server_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="mpt-suite-pg-"))
        self.data = self.dir / "data"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@/{DATABASE}?host={self.dir}"

    def _as_postgres(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", USER, "--", *cmd], capture_output=True, text=True, timeout=timeout, check=True
        )

    def start(self) -> LocalPostgres:
        assert self.bin is not None
        shutil.chown(self.dir, USER)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"
        )
        options = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "start",
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._as_postgres(str(self.bin / "createdb"), "-h", str(self.dir), "-U", USER, DATABASE)
        return self

    def database(self, name: str) -> str:
        """A new empty database on this server: its URL."""
        assert self.bin is not None
        self._as_postgres(str(self.bin / "createdb"), "-h", str(self.dir), "-U", USER, name)
        return f"postgresql://{USER}@/{name}?host={self.dir}"

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
                for _ in range(100):
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    why = unavailable()
    if why:
        raise SystemExit(why)
    server = LocalPostgres().start()
    try:
        input(f"{server.url}\nEnter stops it: ")
    finally:
        server.stop()
