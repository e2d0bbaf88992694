"""PostgreSQL clusters of a test's own, from the machine's PostgreSQL binaries (Debian's
/usr/lib/postgresql/<major>/bin): a primary that allows streaming replication and standbys made
from it with `pg_basebackup`, each on a free port, in a temporary directory, stopped afterwards.

PostgreSQL refuses to run as root; as root the commands run as the `postgres` system user
(Debian's packages create it). Without the binaries a test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self, bin_dir: Path, data: Path, port: int, user: str | None) -> None:
        self.bin = bin_dir
        self.data = data
        self.port = port
        self.user = user

    def run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        return done.stdout

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        log = self.data.parent / f"{self.data.name}.log"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(AssertionError):
            self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Path, str | None]]:
    """(binaries, a temporary directory the cluster user owns, that user or None)."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="lx-pg-"))
    root.chmod(0o755)
    if user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    try:
        yield bin_dir, root, user
    finally:
        shutil.rmtree(root, ignore_errors=True)


def primary(bin_dir: Path, root: Path, user: str | None) -> Cluster:
    """A new cluster that accepts replication connections (trust, loopback only)."""
    c = Cluster(bin_dir, root / "primary", free_port(), user)
    c.run("initdb", "-D", str(c.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    with open(c.data / "postgresql.conf", "a") as fh:
        fh.write(
            f"\nport = {c.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "wal_level = replica\nmax_wal_senders = 5\nfsync = off\nsynchronous_commit = off\n"
            "full_page_writes = off\nshared_buffers = 32MB\n"
        )
    with open(c.data / "pg_hba.conf", "w") as fh:
        fh.write("local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
    c.start()
    return c


def standby(source: Cluster, root: Path, name: str = "replica") -> Cluster:
    """A streaming replica of `source` made with pg_basebackup (-R writes standby.signal and the
    connection to follow), on a port of its own, started."""
    c = Cluster(source.bin, root / name, free_port(), source.user)
    c.run(
        "pg_basebackup", "-h", "127.0.0.1", "-p", str(source.port), "-U", "postgres",
        "-D", str(c.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
    )  # fmt: skip
    with open(c.data / "postgresql.auto.conf", "a") as fh:
        fh.write(f"\nport = {c.port}\nhot_standby = on\n")
    c.start()
    return c
