"""The `ledgerx` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import secrets
import sys
from pathlib import Path

from ledgerx import logs
from ledgerx.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"ledgerx: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _resolved() -> Settings:
    from ledgerx.services import resolve_urls

    return resolve_urls(_settings())


def cmd_migrate(_: argparse.Namespace) -> int:
    from ledgerx.db.migrate import upgrade

    s = _resolved()
    assert s.database_url
    upgrade(s.database_url)
    print("database is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ledgerx.app import create_app
    from ledgerx.db.migrate import upgrade

    s = _resolved()
    logs.configure(s.log_level)
    assert s.database_url
    upgrade(s.database_url)
    logs.configure(s.log_level)  # alembic's fileConfig-free run may have touched logging
    app = create_app(s)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_max_size=1 << 20,
        access_log=False,
    )
    return 0


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


def cmd_export_schema(args: argparse.Namespace) -> int:
    from ledgerx.schema import schema_sdl

    sdl = schema_sdl()
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        Path(args.output).write_text(sdl)
        print(f"wrote {args.output}")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Promote (or create) a platform admin. Runs as the database owner: an explicit admin path."""

    async def run() -> int:
        from sqlalchemy import text

        from ledgerx.db.engine import make_engine
        from ledgerx.domain.auth.passwords import Passwords
        from ledgerx.domain.auth.service import normalize_email
        from ledgerx.ids import uuid7

        s = _resolved()
        assert s.database_url
        email = normalize_email(args.email)
        engine = make_engine(s.database_url, role=None, pool_size=1)
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
    p.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="bring the database up to date").set_defaults(func=cmd_migrate)

    sub.add_parser("scheduler", help="run only the billing scheduler loop").set_defaults(func=cmd_scheduler)

    sub.add_parser("worker", help="run the background workers (Stripe webhook processor)").set_defaults(func=cmd_worker)

    p = sub.add_parser("reconcile", help="match Stripe's recent events and payments with the books")
    p.add_argument("--since", default="24h", help="a duration back from now (24h, 7d) or an ISO date (default 24h)")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    p.add_argument("--output", "-o", default="-")
    p.set_defaults(func=cmd_export_schema)

    p = sub.add_parser("create-admin", help="make a user a platform admin (creating it if needed)")
    p.add_argument("email")
    p.set_defaults(func=cmd_create_admin)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"ledgerx: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
