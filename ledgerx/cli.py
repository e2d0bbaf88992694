"""The `ledgerx` command."""

from __future__ import annotations

import argparse
import asyncio
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
