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
import socket
import subprocess
import tempfile
import time
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


def pgbouncer_binary() -> str | None:
    """Debian's PgBouncer (scripts/ensure-pgbouncer.sh installs it), or None."""
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)


class Bouncer:
    """A PgBouncer process of the test's own in front of a `Cluster` (trust auth, loopback only)."""

    def __init__(self, binary: str, root: Path, port: int, user: str | None, database: str, upstream: Cluster) -> None:
        self.binary = binary
        self.dir = root / f"pgbouncer-{port}"
        self.port = port
        self.user = user
        self.database = database
        self.upstream = upstream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ini(self) -> Path:
        return self.dir / "pgbouncer.ini"

    @property
    def log(self) -> Path:
        return self.dir / "pgbouncer.log"

    def url(self, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{self.database}"

    def write(self, settings: dict[str, str | int], users: tuple[str, ...]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pgb: dict[str, str | int] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.dir / "userlist.txt"),
            "logfile": str(self.log),
            "pidfile": str(self.dir / "pgbouncer.pid"),
            "admin_users": "postgres",
            **settings,
        }
        upstream = f"host=127.0.0.1 port={self.upstream.port} dbname={self.database}"
        lines = ["[databases]", f"{self.database} = {upstream}", "", "[pgbouncer]"]
        lines += [f"{k} = {v}" for k, v in pgb.items()]
        self.ini.write_text("\n".join(lines) + "\n")
        (self.dir / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in users))
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in (self.dir, self.ini, self.dir / "userlist.txt"):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        """Run it in the foreground (as the cluster's user when root) until it accepts connections."""
        pw = pwd.getpwnam(self.user) if self.user else None
        self.proc = subprocess.Popen(
            [self.binary, str(self.ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=pw.pw_uid if pw else None,
            group=pw.pw_gid if pw else None,
            extra_groups=[] if pw else None,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited ({self.proc.returncode}): {self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise AssertionError(f"pgbouncer did not listen on {self.port} within 15 s: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def bouncer(
    upstream: Cluster, root: Path, database: str, settings: dict[str, str | int], users: tuple[str, ...] = ("postgres",)
) -> Bouncer:
    """PgBouncer on a free port in front of `upstream`'s `database`, started; skips without it."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer.sh, or apt-get install pgbouncer)")
    b = Bouncer(binary, root, free_port(), upstream.user, database, upstream)
    b.write(settings, users)
    b.start()
    return b
