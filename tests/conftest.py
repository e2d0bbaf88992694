"""Fixtures: a real PostgreSQL and Redis (this machine's when the URLs are set, embedded otherwise).

Each test session gets a fresh database built by running the alembic revisions; each test gets its
own services, Redis key prefix and data, so tests do not depend on order or on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
import uvicorn

from ledgerx import embedded
from ledgerx.app import create_app
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.domain.auth.keys import generate_pem
from ledgerx.services import Services
from ledgerx.settings import Settings

if TYPE_CHECKING:
    from tests.fake_stripe import FakeStripe

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / ".ledgerx" / "test"


@pytest.fixture(scope="session")
def admin_database_url() -> str:
    url = os.environ.get("LEDGERX_TEST_DATABASE_URL")
    return url or embedded.start_postgres(TEST_DATA)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("LEDGERX_TEST_REDIS_URL")
    return url or embedded.start_redis(TEST_DATA)


# This session's database URL, for helpers that read what only a mailbox would show (the tokens of
# mailed links, from the outbox table); set by the `database_url` fixture.
SESSION: dict[str, str] = {}


@contextlib.asynccontextmanager
async def database_of_its_own(admin_database_url: str, prefix: str) -> AsyncIterator[str]:
    """An empty database on the test server, dropped (with its connections) afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = admin_database_url.split("?", 1)
    path_start = base[0].rfind("/")
    try:
        yield base[0][: path_start + 1] + name + ("?" + base[1] if len(base) > 1 else "")
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_url(admin_database_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, schema from the migrations (never create_all)."""
    async with database_of_its_own(admin_database_url, "lxtest") as url:
        await asyncio.to_thread(upgrade, url)
        SESSION["database_url"] = url
        yield url


@pytest.fixture
async def scratch_database(admin_database_url: str) -> AsyncIterator[str]:
    """An empty database of the test's own, which the test migrates itself (migration tests)."""
    async with database_of_its_own(admin_database_url, "lxmig") as url:
        yield url


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    """The fake Stripe API server (tests/fake_stripe.py); a module opts in by pointing its
    `settings` at it (`stripe_settings`)."""
    from tests.fake_stripe import FakeStripe  # it imports this module (free_port)

    f = FakeStripe()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture(scope="session")
def jwt_keys() -> tuple[str, ...]:
    return (generate_pem(), generate_pem())


@pytest.fixture
def settings(
    database_url: str, redis_url: str, jwt_keys: tuple[str, ...], tmp_path: Path, request: pytest.FixtureRequest
) -> Settings:
    loops = request.node.get_closest_marker("background_loops") is not None
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        jwt_private_keys=jwt_keys[:1],
        # Cheap argon2 so hundreds of sign-ups stay fast; the parameters are still argon2id.
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        redis_prefix=f"lxt:{secrets.token_hex(6)}:",
        login_limit_per_email=20,
        login_limit_per_ip=1000,
        # Tests hammer one user or key on purpose; the gateway tests set their own small limits.
        rate_limit_burst=1_000_000,
        rate_limit_per_second=1_000_000.0,
        anonymous_rate_limit_burst=1_000_000,
        anonymous_rate_limit_per_second=1_000_000.0,
        # Background loops (scheduler, webhook processor, mail sender) run only in the tests
        # marked `@pytest.mark.background_loops`, so they never interfere with other tests.
        scheduler_enabled=loops,
        worker_enabled=loops,
        db_pool_size=10,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services.build(settings)
    yield svc
    await svc.close()


class GQL:
    """A small GraphQL client over any httpx client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.last: httpx.Response | None = None

    async def __call__(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        self.last = await self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=h)
        body: dict[str, Any] = self.last.json()
        return body

    async def ok(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        body = await self(query, variables, **kw)
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def error(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """The first error's extensions (asserts there is one)."""
        body = await self(query, variables, **kw)
        assert body.get("errors"), f"expected an error, got {body}"
        ext: dict[str, Any] = body["errors"][0].get("extensions") or {}
        ext["message"] = body["errors"][0]["message"]
        return ext


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def gql(client: httpx.AsyncClient) -> GQL:
    return GQL(client)


SIGN_UP = """
mutation($input: SignUpInput!) {
  signUp(input: $input) { accessToken refreshToken expiresIn user { id email name } }
}
"""


@dataclasses.dataclass
class SignedIn:
    token: str
    refresh: str
    user_id: str
    email: str
    password: str


def new_email(tag: str = "u") -> str:
    return f"{tag}-{secrets.token_hex(5)}@example.com"


async def sign_up(gql: GQL, email: str | None = None, password: str = "correct horse battery") -> SignedIn:
    email = email or new_email()
    data = await gql.ok(SIGN_UP, {"input": {"email": email, "password": password, "name": "Test User"}})
    p = data["signUp"]
    return SignedIn(p["accessToken"], p["refreshToken"], p["user"]["id"], email, password)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class LiveServer:
    url: str
    ws_url: str
    services: Services


@pytest.fixture
async def live_server(services: Services) -> AsyncIterator[LiveServer]:
    """The app on a real socket (uvicorn in this event loop), for websockets and real HTTP."""
    port = free_port()
    app = create_app(services.settings, services)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=10)
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", services)
    server.should_exit = True
    await task


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> Iterator[None]:
    return
