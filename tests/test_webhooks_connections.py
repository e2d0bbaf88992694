"""The delivery worker's HTTP/1.1 client (ledgerx/domain/webhooks/connections.py) against real local
servers: a scripted asyncio server that answers each request as a test says (keep-alive, close,
chunked, oversized, silent), uvicorn, and uvicorn over TLS with a certificate made here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledgerx.domain.webhooks import connections
from ledgerx.domain.webhooks.connections import ConnectError, Pool, RefusedAddress, RemoteProtocolError
from tests.conftest import free_port
from tests.webhooks_out_receiver import running_receiver

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
HEADERS = [(b"webhook-id", b"evt_1"), (b"content-type", b"application/json")]

# How the scripted server answers the n-th request (0-based) on the c-th connection (0-based):
# bytes to write, then whether to close the connection.
Script = Callable[[int, int], tuple[bytes, bool]]


class Scripted:
    """A raw HTTP/1.1 server: reads each request (head and Content-Length body), answers per script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = free_port()
        self.requests: list[tuple[int, bytes]] = []  # (connection number, raw head)
        self.connections = 0
        self.server: asyncio.Server | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections = self.connections, self.connections + 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests.append((number, head))
                answer, close = self.script(number, n)
                n += 1
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def pool(**kw: object) -> Pool:
    return Pool(allow_private=True, user_agent="LedgerX-Webhooks/test", **kw)  # type: ignore[arg-type]


async def test_one_connection_serves_consecutive_posts() -> None:
    async with Scripted(lambda c, n: (OK, False)) as server:
        p = pool()
        for _ in range(5):
            assert await p.post(server.url(), HEADERS, b"{}") == 200
        await p.aclose()
    assert server.connections == 1 and len(server.requests) == 5
    head = server.requests[0][1].decode()
    assert head.startswith("POST /hook HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n" in head.lower()
    assert "webhook-id: evt_1\r\n" in head and "content-length: 2\r\n" in head


def test_the_same_under_uvloop() -> None:
    """`ledgerx serve` runs on uvloop (uvicorn picks it), whose transports are not asyncio's."""
    uvloop = pytest.importorskip("uvloop")  # installed with uvicorn[standard] except on Windows

    async def exchanges() -> int:
        async with Scripted(lambda c, n: (OK, n == 2)) as server:
            p = pool()
            for _ in range(4):
                assert await p.post(server.url(), HEADERS, b"{}") == 200
            await p.aclose()
        return server.connections

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(exchanges()) == 2  # kept alive, then a new one after the server closed


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    http10 = b"HTTP/1.0 204 No Content\r\n\r\n"
    async with Scripted(lambda c, n: (closing if c == 0 else http10, c == 0)) as server:
        p = pool()
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        assert await p.post(server.url(), HEADERS, b"{}") == 204  # HTTP/1.0 without keep-alive
        assert p.idle == 0
        assert await p.post(server.url(), HEADERS, b"{}") == 204
        await p.aclose()
    assert server.connections == 3


async def test_a_stale_keep_alive_connection_is_retried_once_on_a_new_one() -> None:
    """The server takes the second request on the kept connection and closes without answering
    (an idle timeout racing our request): the pool sends it again on a fresh connection."""
    async with Scripted(lambda c, n: (b"", True) if (c, n) == (0, 1) else (OK, False)) as server:
        p = pool()
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        await p.aclose()
    assert [c for c, _ in server.requests] == [0, 0, 1]  # at least once: the receiver saw it twice


async def test_a_fresh_connection_closed_without_an_answer_fails() -> None:
    async with Scripted(lambda c, n: (b"", True)) as server:
        p = pool()
        with pytest.raises(RemoteProtocolError, match="closed the connection without answering"):
            await p.post(server.url(), HEADERS, b"{}")
        await p.aclose()
    assert server.connections == 1  # not retried: only a reused connection can have gone stale


async def test_a_truncated_answer_fails_with_its_status() -> None:
    short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok"
    async with Scripted(lambda c, n: (short, True)) as server:
        p = pool()
        with pytest.raises(RemoteProtocolError) as err:
            await p.post(server.url(), HEADERS, b"{}")
        assert err.value.status == 200
        await p.aclose()


async def test_chunked_answers_are_read_and_large_ones_dropped() -> None:
    chunked = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100_000
    async with Scripted(lambda c, n: (chunked if n == 0 else big, False)) as server:
        p = pool()
        assert await p.post(server.url(), HEADERS, b"{}") == 201
        assert p.idle == 1  # a complete answer leaves the connection for the next request
        assert await p.post(server.url(), HEADERS, b"{}", max_response_bytes=1000) == 200
        assert p.idle == 0  # read up to the limit, then dropped rather than drained
        await p.aclose()


async def test_bytes_arriving_on_an_idle_connection_retire_it() -> None:
    # The first answer carries a stray second response: that connection's framing is lost.
    async with Scripted(lambda c, n: (OK + OK if (c, n) == (0, 0) else OK, False)) as server:
        p = pool()
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        await asyncio.sleep(0.05)
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        await p.aclose()
    assert server.connections == 2


async def test_a_cancelled_exchange_aborts_its_connection() -> None:
    async with Scripted(lambda c, n: (b"" if (c, n) == (0, 0) else OK, False)) as server:
        p = pool()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await p.post(server.url(), HEADERS, b"{}")
        assert p.idle == 0
        assert await p.post(server.url(), HEADERS, b"{}") == 200
        await p.aclose()
    assert server.connections == 2


async def test_refused_connections_and_refused_addresses() -> None:
    with pytest.raises(ConnectError):
        await pool().post(f"http://127.0.0.1:{free_port()}/", HEADERS, b"{}")
    guarded = Pool(allow_private=False, user_agent="t")
    with pytest.raises(RefusedAddress, match=r"refused: 127\.0\.0\.1 is a loopback address"):
        await guarded.post("http://127.0.0.1:9/", HEADERS, b"{}")
    with pytest.raises(RefusedAddress, match="names a local or internal host"):
        await guarded.post("http://localhost:9/", HEADERS, b"{}")
    with pytest.raises(RefusedAddress, match="link-local"):
        await guarded.post("http://[::ffff:169.254.169.254]/", HEADERS, b"{}")


def test_request_targets_and_credentials_from_the_url() -> None:
    t = connections.target("https://user%40x:p%3Ass@example.com/hooks/é?a=1&b=ü")
    assert (t.scheme, t.host, t.port) == ("https", "example.com", 443)
    assert t.host_header == b"example.com"
    assert t.path == b"/hooks/%C3%A9?a=1&b=%C3%BC"
    assert t.authorization == b"Basic dXNlckB4OnA6c3M="  # base64("user@x:p:ss")
    t = connections.target("http://[2001:db8::1]:8080")
    assert (t.host, t.port, t.host_header, t.path) == ("2001:db8::1", 8080, b"[2001:db8::1]:8080", b"/")
    assert connections.target("http://example.com/a%20b").path == b"/a%20b"  # not encoded twice


async def test_credentials_in_the_url_reach_uvicorn_as_basic_auth() -> None:
    async with running_receiver() as receiver:
        p = pool()
        url = receiver.url("/ok").replace("http://", "http://hook:s3cret@")
        assert await p.post(url, HEADERS, b'{"a":1}') == 200
        await p.aclose()
    [got] = receiver.received
    assert got.headers["authorization"] == "Basic aG9vazpzM2NyZXQ="
    assert got.body == b'{"a":1}' and got.headers["user-agent"] == "LedgerX-Webhooks/test"


def _certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("LedgerX test CA"))
        .issuer_name(name("LedgerX test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@asynccontextmanager
async def tls_receiver(cert: Path, key: Path) -> AsyncIterator[tuple[int, list[bytes]]]:
    bodies: list[bytes] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        msg = await receive()
        bodies.append(msg.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", ssl_certfile=cert, ssl_keyfile=key
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield port, bodies
    finally:
        server.should_exit = True
        await task


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    ca, cert, key = _certificate(tmp_path)
    async with tls_receiver(cert, key) as (port, bodies):
        trusting = connections.tls_context()
        trusting.load_verify_locations(cafile=ca)
        p = pool(tls=trusting)
        assert await p.post(f"https://127.0.0.1:{port}/hook", HEADERS, b"{}") == 200
        assert await p.post(f"https://127.0.0.1:{port}/hook", HEADERS, b"{}") == 200
        assert p.idle == 1  # kept alive over TLS too
        await p.aclose()
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool().post(f"https://127.0.0.1:{port}/hook", HEADERS, b"{}")  # the public trust store
    assert bodies == [b"{}", b"{}"]
    assert isinstance(connections.tls_context(), ssl.SSLContext)
