"""The `ledgerx` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from ledgerx import embedded, logs
from ledgerx.settings import Settings, SettingsError


class _Fatal(Exception):
    """A start-up failure the user can act on: printed as one line, exit status 1."""


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived. Raised from the signal handler so that every `finally` runs on
    the way out, and main() stops the embedded servers (the default SIGTERM action would kill the
    process without running atexit hooks, leaving PostgreSQL and Redis behind)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Signals that arrived while held (None: not holding). Starting or stopping an embedded server is
# not interrupted halfway (a PostgreSQL started by a killed pg_ctl would have no handle to stop it).
_held: list[int] | None = None


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _held is not None:
        _held.append(signum)
        return
    raise _Stopped(signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    global _held
    if _held is not None:  # nested: the outer block delivers them
        yield
        return
    _held = []
    try:
        yield
    finally:
        pending, _held = _held, None
        if pending:
            raise _Stopped(pending[0])


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"ledgerx: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _resolved() -> Settings:
    """Settings with the database and Redis URLs filled in (starting the embedded servers when
    they are unset) and both checked to answer, so a wrong URL is one line, not a traceback."""
    from ledgerx.services import resolve_urls

    s = _settings()
    logs.configure(s.log_level)  # before the embedded servers start, so their lines appear
    with _signals_held():
        try:
            resolved = resolve_urls(s)
        except embedded.EmbeddedError as exc:
            raise _Fatal(str(exc)) from None
    _check_reachable(
        resolved,
        db_label="DATABASE_URL" if s.database_url else "embedded PostgreSQL",
        redis_label="REDIS_URL" if s.redis_url else "embedded Redis",
    )
    return resolved


def _check_reachable(s: Settings, *, db_label: str, redis_label: str) -> None:
    import asyncpg
    from redis.asyncio import Redis
    from sqlalchemy.engine import make_url

    from ledgerx.db.engine import asyncpg_dsn

    assert s.database_url
    assert s.redis_url
    db_url, redis_url = s.database_url, s.redis_url

    async def probe() -> list[str]:
        problems: list[str] = []
        try:
            conn = await asyncpg.connect(asyncpg_dsn(db_url), timeout=5)
        except Exception as exc:
            shown = make_url(db_url).render_as_string(hide_password=True)
            problems.append(f"{db_label}: cannot connect to {shown}: {_reason(exc)}")
        else:
            await conn.close()
        client = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            await client.ping()
        except Exception as exc:
            problems.append(f"{redis_label}: cannot connect to {_redact(redis_url)}: {_reason(exc)}")
        finally:
            await client.aclose()
        return problems

    problems = asyncio.run(probe())
    if problems:
        raise _Fatal("\n".join(problems))


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within 5 s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    text = " ".join(str(exc).split())
    # asyncpg tries every address a host name resolves to and joins the errors.
    text = text.removeprefix("Multiple exceptions: ")
    return text or type(exc).__name__


def cmd_migrate(_: argparse.Namespace) -> int:
    from ledgerx.db.migrate import upgrade

    s = _resolved()
    assert s.migrations_url
    upgrade(s.migrations_url)
    print("database is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ledgerx.app import create_app
    from ledgerx.db.migrate import upgrade
    from ledgerx.domain.auth.keys import KeyRing

    if args.workers < 1:
        raise _Fatal("--workers must be at least 1")
    raw = _settings()
    s = _resolved()
    assert s.migrations_url
    upgrade(s.migrations_url)
    logs.configure(s.log_level)  # alembic's fileConfig-free run may have touched logging
    app: Any = "ledgerx.app:serve_app"
    if args.workers == 1:
        app = create_app(s, settle_heap=True)
    else:
        # Each worker process builds its own app (`serve_app`) from the environment: give it the
        # servers this command resolved (the embedded ones live in this process), and make the
        # development signing key now so the workers do not race to create it.
        KeyRing.from_settings(s)
        assert s.database_url
        assert s.redis_url
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = s.database_url, s.redis_url
    config = uvicorn.Config(
        app,
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_max_size=1 << 20,
        access_log=False,  # RequestContext writes one line per request
    )
    banner = _banner(s, args.host, args.port, embedded_db=not raw.database_url, embedded_redis=not raw.redis_url)
    _run_server(config, banner)
    return 0


def _run_server(config: Any, banner: str) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # Printed once it listens, not before: the port may be taken.
            if self.started and not self.should_exit:
                print(banner, flush=True)

    if config.workers > 1:
        # Processes sharing one listening socket, each an instance as docs/scaling.md describes
        # (their own pools and caches; limits, leases and events shared through PostgreSQL and Redis).
        from uvicorn.supervisors import Multiprocess

        class Supervisor(Multiprocess):
            stopped_by: int | None = None

            def handle_signals(self) -> None:
                # uvicorn's supervisor takes SIGTERM/SIGINT over: remember which one, so the
                # command ends by it like a single process (main() stops the embedded servers).
                for sig in self.signal_queue:
                    if sig in (signal.SIGINT, signal.SIGTERM) and self.stopped_by is None:
                        self.stopped_by = sig
                super().handle_signals()

        sock = config.bind_socket()
        print(banner, flush=True)
        supervisor = Supervisor(config, sockets=[sock])
        supervisor.run()
        if supervisor.stopped_by is not None:
            raise _Stopped(supervisor.stopped_by)
        return
    Server(config).run()


def _banner(s: Settings, host: str, port: int, *, embedded_db: bool, embedded_redis: bool) -> str:
    from ledgerx import __version__

    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host  # noqa: S104
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}"
    ide = "  (GraphiQL: open it in a browser)" if not s.production else ""
    if embedded_db and embedded_redis:
        servers = "embedded PostgreSQL and Redis"
    elif embedded_db:
        servers = "embedded PostgreSQL; Redis from REDIS_URL"
    elif embedded_redis:
        servers = "embedded Redis; PostgreSQL from DATABASE_URL"
    else:
        servers = "DATABASE_URL and REDIS_URL (no embedded servers)"
    lines = [
        f"LedgerX {__version__} is up ({'production' if s.production else 'development'})",
        f"  GraphQL    {base}/graphql{ide}",
        f"  Dashboard  {base}/dashboard",
        f"  Data       {s.data_dir.resolve()}  ({servers})",
        "  Admin      ledgerx create-admin EMAIL   (makes EMAIL a platform admin)",
    ]
    if not s.production:
        lines.append("  Demo data  ledgerx demo   (a project with wallets, usage, rules and a plan)")
    return "\n".join(lines)


def cmd_scheduler(_: argparse.Namespace) -> int:
    """Run only the billing scheduler loop (no HTTP) until SIGINT/SIGTERM; the lease makes any
    number of these (and `serve` instances with SCHEDULER_ENABLED) share the work safely."""
    import signal

    from ledgerx.services import Services

    s = _resolved()
    logs.configure(s.log_level)

    async def run() -> int:
        services = Services.build(s)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        services.scheduler.start()
        try:
            await stop.wait()
        finally:
            await services.close()  # stops the loop and hands the lease over
        return 0

    return asyncio.run(run())


def cmd_worker(_: argparse.Namespace) -> int:
    """Run the background workers (the Stripe webhook processor, and the mail outbox when SMTP_URL
    is set) without HTTP, until SIGINT/SIGTERM. Any number may run beside `serve` instances: the
    inbox is claimed with SKIP LOCKED and a lease."""
    import signal

    from ledgerx.services import Services

    s = _resolved()
    logs.configure(s.log_level)

    async def run() -> int:
        services = Services.build(s)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        services.webhook_processor.start()
        services.webhook_delivery.start()
        if services.mail_sender is not None:
            services.mail_sender.start()
        try:
            await stop.wait()
        finally:
            await services.close()
        return 0

    return asyncio.run(run())


_SINCE = re.compile(r"^\s*(\d+)\s*([mhd])\s*$")


def parse_since(value: str, now: dt.datetime) -> dt.datetime:
    """`--since`: a duration back from now (90m, 24h, 7d) or an ISO date/instant (UTC if no zone)."""
    m = _SINCE.match(value)
    if m:
        unit = {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - dt.timedelta(seconds=int(m.group(1)) * unit)
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: expected a duration like 24h or 7d, or an ISO date, got {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare Stripe's recent events and paid checkouts with the books; process what was missed."""
    from ledgerx.domain.payments import reconcile
    from ledgerx.services import Services

    try:
        since = parse_since(args.since, dt.datetime.now(dt.UTC))
    except ValueError as exc:
        print(f"ledgerx: {exc}", file=sys.stderr)
        return 2
    s = _resolved()
    logs.configure(s.log_level)

    async def run() -> int:
        from ledgerx.domain.errors import AppError

        services = Services.build(s)
        try:
            report = await reconcile.reconcile(services.payments, since)
        except AppError as exc:
            print(f"ledgerx: {exc.message}", file=sys.stderr)
            return 2
        finally:
            await services.close()
        for line in report.lines():
            print(line)
        return 0 if report.clean else 1

    return asyncio.run(run())


def cmd_demo(_: argparse.Namespace) -> int:
    """Seed a demo project (idempotent) and print how to sign in to it."""
    from ledgerx import demo
    from ledgerx.db.migrate import upgrade
    from ledgerx.domain.errors import AppError
    from ledgerx.services import Services

    s = _resolved()
    if s.production:
        raise _Fatal("demo: the demo account has a published password; not in production (LEDGERX_ENV)")
    assert s.migrations_url
    upgrade(s.migrations_url)
    logs.configure(s.log_level)

    async def run() -> demo.DemoReport:
        services = Services.build(s)
        try:
            return await demo.seed(services)
        except demo.DemoError as exc:
            raise _Fatal(f"demo: {exc}") from None
        except AppError as exc:
            raise _Fatal(f"demo: {exc.message}") from None
        finally:
            await services.close()

    for line in asyncio.run(run()).lines():
        print(line)
    return 0


def cmd_export_schema(args: argparse.Namespace) -> int:
    from ledgerx.graphql_schema import schema_sdl

    sdl = schema_sdl()
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        Path(args.output).write_text(sdl)
        print(f"wrote {args.output}")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Promote (or create) a platform admin. Runs as the database owner: an explicit admin path."""
    s = _resolved()

    async def run() -> int:
        from sqlalchemy import text

        from ledgerx.db.engine import make_engine
        from ledgerx.domain.auth.passwords import Passwords
        from ledgerx.domain.auth.service import normalize_email
        from ledgerx.ids import uuid7

        assert s.migrations_url  # an owner path: straight to PostgreSQL, never through a pooler
        email = normalize_email(args.email)
        engine = make_engine(s.migrations_url, role=None, pool_size=1)
        try:
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        text("UPDATE users SET is_platform_admin = true WHERE lower(email) = :e RETURNING id"),
                        {"e": email},
                    )
                ).first()
                if row is not None:
                    print(f"{email} is now a platform admin")
                    return 0
                password = secrets.token_urlsafe(18)
                pw = Passwords(
                    time_cost=s.argon2_time_cost,
                    memory_kib=s.argon2_memory_kib,
                    parallelism=s.argon2_parallelism,
                )
                await conn.execute(
                    text(
                        "INSERT INTO users (id, email, name, password_hash, is_platform_admin, email_verified)"
                        " VALUES (:id, :e, 'Platform admin', :h, true, true)"
                    ),
                    {"id": uuid7(), "e": email, "h": await pw.hash(password)},
                )
                print(f"created platform admin {email} with password: {password}")
                print("(shown once; change it after signing in)")
                return 0
        finally:
            await engine.dispose()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerx", description="LedgerX monetization backend")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="migrate the database, then serve the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted for X-Forwarded-*")
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or 1),
        help="server processes sharing the port, e.g. one per core (default WEB_CONCURRENCY or 1)",
    )
    p.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="bring the database up to date").set_defaults(func=cmd_migrate)

    sub.add_parser("scheduler", help="run only the billing scheduler loop").set_defaults(func=cmd_scheduler)

    sub.add_parser("worker", help="run the background workers (Stripe webhook processor)").set_defaults(func=cmd_worker)

    p = sub.add_parser("reconcile", help="match Stripe's recent events and payments with the books")
    p.add_argument("--since", default="24h", help="a duration back from now (24h, 7d) or an ISO date (default 24h)")
    p.set_defaults(func=cmd_reconcile)

    sub.add_parser(
        "demo", help="seed a demo project (wallets, usage, billing rules, a plan); running it again adds nothing"
    ).set_defaults(func=cmd_demo)

    p = sub.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    p.add_argument("--output", "-o", default="-")
    p.set_defaults(func=cmd_export_schema)

    p = sub.add_parser("create-admin", help="make a user a platform admin (creating it if needed)")
    p.add_argument("email")
    p.set_defaults(func=cmd_create_admin)

    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    stopped: int | None = None
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"ledgerx: configuration error: {exc}", file=sys.stderr)
        return 2
    except _Fatal as exc:
        for line in str(exc).splitlines():
            print(f"ledgerx: {line}", file=sys.stderr)
        return 1
    except _Stopped as exc:
        stopped = exc.signum
        return 128 + exc.signum
    finally:
        try:
            with _signals_held():
                embedded.stop_all()
        except _Stopped as exc:
            stopped = stopped or exc.signum
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stopped is not None and argv is None:
            # Stopped by a signal: end by that signal, as the default action would have (systemd
            # and shells read it as a requested stop, not a failure), now that cleanup is done.
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(stopped, signal.SIG_DFL)
            os.kill(os.getpid(), stopped)


if __name__ == "__main__":
    raise SystemExit(main())
