"""Keep-alive HTTP/1.1 connections to webhook endpoints: the delivery worker's only HTTP client.

Why not httpx: measured on the 2-core bench machine, httpx's pool spends ~0.6 ms of CPU per POST
and gets slower as connections are added (its pool scans every connection on each request and
response), so it topped out near 1,600 requests/s with the whole core and below 800/s with a few
hundred connections, while a delivery needs a claim, a signature and a recorded outcome on the
same core besides. A delivery is one small POST whose answer only matters for its status code, so
this module does just that: one request written in one `write`, the answer parsed by h11 (the
parser httpx itself uses), the connection kept for the next delivery to the same origin.

What it keeps of a general client:
- The SSRF guard on every new connection (unless `allow_private`): the host name is checked, then
  resolved here, every address checked, and the connection opened to the address that was checked
  (no second lookup a rebinding DNS server could answer differently). TLS still verifies the name.
- TLS with the certifi trust store httpx uses (the same CA bundle as before), HTTP/1.1 only.
- Credentials in the URL (`https://user:pass@host/`) become `Authorization: Basic`, as httpx did.
- No redirect is followed: a 3xx is the answer (a failed attempt).
- An answer is read up to `max_response_bytes`; past that the connection is dropped, not drained.
- A reused keep-alive connection the server closed just before our request (nothing came back) is
  retried once on a fresh connection; the receiver may then see the delivery twice, which
  at-least-once allows (same `webhook-id`).

Time limits are the caller's (`asyncio.timeout` around `post`): a cancelled exchange aborts its
connection, which is never reused.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import ssl
import time
from collections.abc import Sequence
from typing import cast
from urllib.parse import quote, unquote

import certifi
import h11

from ledgerx.domain.webhooks import ssrf

Header = tuple[bytes, bytes]


class ConnectError(OSError):
    """No connection to the endpoint (refused, unreachable, DNS, TLS handshake)."""


class RefusedAddress(ConnectError):
    """The SSRF guard refused the address the endpoint's host is or resolves to."""


class RemoteProtocolError(Exception):
    """The endpoint broke HTTP/1.1: closed without (fully) answering, or sent what h11 rejects.
    `status` is the answer's status code when its head had arrived."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _ClosedBeforeAnswer(RemoteProtocolError):
    def __init__(self) -> None:
        super().__init__("the server closed the connection without answering")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: the connection's origin and the request line's parts."""

    scheme: str
    host: str  # as in the URL, without brackets (what DNS, the guard and TLS see)
    port: int
    host_header: bytes
    path: bytes  # path and query, percent-encoded where the URL was not
    authorization: bytes | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


# Characters that may stay as they are in a request target (RFC 3986 reserved and unreserved, and
# '%' so an already encoded URL is not encoded twice).
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


@functools.lru_cache(maxsize=4096)
def target(url: str) -> Target:
    """The parts of an endpoint URL (checked by `ssrf.parse_url`; BAD_USER_INPUT when malformed)."""
    parts = ssrf.parse_url(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    path = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_TARGET_SAFE)
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port,
        host_header=(shown if default else f"{shown}:{port}").encode("ascii"),
        path=path.encode("ascii"),
        authorization=authorization,
    )


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its h11 state; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.closed = False  # by either side, or unusable: never reused
        self.eof = False  # the end of the server's stream was given to h11
        self.busy = False
        self.idle_since = 0.0
        self._signal: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, hence no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for (a 408 before an idle close, garbage): the connection's
            # framing can no longer be trusted.
            self.abort()
            return
        self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool | None:
        self._end()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        self.closed = True
        if not self.eof:
            self.eof = True
            self.h11.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        if self._signal is not None and not self._signal.done():
            self._signal.set_result(None)

    # -- use ---------------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.h11.our_state is h11.IDLE
            and self.h11.their_state is h11.IDLE
        )

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.eof:  # h11 answers a closed stream with an event or an error; never this
                    raise RemoteProtocolError("the connection ended mid-answer")
                self._signal = asyncio.get_running_loop().create_future()
                try:
                    await self._signal
                finally:
                    self._signal = None
                continue
            if event is h11.PAUSED:  # one request per cycle: cannot happen
                raise RemoteProtocolError("the server answered more than was asked")
            assert isinstance(event, h11.Event)
            return event

    async def exchange(self, head: h11.Request, body: bytes, max_response_bytes: int) -> int:
        """Send one request and read its answer: the status code."""
        assert self.transport is not None
        try:
            data = self.h11.send(head) or b""
            data += self.h11.send(h11.Data(data=body)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            self.abort()
            raise RemoteProtocolError(f"cannot send this request: {exc}") from exc
        status: int | None = None
        read = 0
        self.busy = True
        self.transport.write(data)
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    read += len(event.data)
                    if read > max_response_bytes:
                        self.abort()  # enough of it: dropped rather than drained
                        break
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
                # InformationalResponse (1xx): the real answer follows.
        except h11.RemoteProtocolError as exc:
            self.abort()
            if status is None and self.eof:
                raise _ClosedBeforeAnswer from exc
            raise RemoteProtocolError(str(exc) or "the answer is not valid HTTP/1.1", status) from exc
        except BaseException:
            self.abort()  # timed out or cancelled mid-exchange: its state is unknown
            raise
        finally:
            self.busy = False
        if status is None:  # h11 raises before an answer without a head ends; kept for the types
            raise RemoteProtocolError("the answer had no status line")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE and not self.h11.trailing_data[0]:
            self.h11.start_next_cycle()
            self.idle_since = time.monotonic()
        else:
            # The server closes it (Connection: close, HTTP/1.0), we stopped reading, or bytes came
            # after the answer (the next answer would be read from them).
            self.abort()
        return status


class Pool:
    """Keep-alive connections per origin (scheme, host, port), shared by every endpoint there.

    How many connections are open at once is bounded by the caller (the worker's lanes); the pool
    keeps at most `max_idle_per_origin` idle ones per origin, each for `keepalive` seconds."""

    def __init__(
        self,
        *,
        allow_private: bool,
        user_agent: str,
        keepalive: float = 30.0,
        max_idle_per_origin: int = 64,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.user_agent = user_agent.encode()
        self.keepalive = keepalive
        self.max_idle_per_origin = max_idle_per_origin
        self._tls = tls
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._closed = False

    @property
    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context()
        return self._tls

    @property
    def idle(self) -> int:
        return sum(len(q) for q in self._idle.values())

    async def post(
        self, url: str, headers: Sequence[Header], body: bytes, *, max_response_bytes: int = 64 * 1024
    ) -> int:
        """POST `body` to `url`; the answer's status code. Raises ConnectError (RefusedAddress for
        the SSRF guard), RemoteProtocolError, or the caller's timeout."""
        t = target(url)
        head = h11.Request(method=b"POST", target=t.path, headers=self._headers(t, headers, len(body)))
        conn = self._reuse(t)
        if conn is not None:
            try:
                status = await conn.exchange(head, body, max_response_bytes)
            except _ClosedBeforeAnswer:
                pass  # it went stale as we sent: once more on a new connection
            else:
                self._release(t, conn)
                return status
        conn = await self._open(t)
        status = await conn.exchange(head, body, max_response_bytes)
        self._release(t, conn)
        return status

    def _headers(self, t: Target, headers: Sequence[Header], length: int) -> list[Header]:
        out: list[Header] = [
            (b"host", t.host_header),
            (b"user-agent", self.user_agent),
            (b"content-length", str(length).encode()),
        ]
        if t.authorization is not None:
            out.append((b"authorization", t.authorization))
        out.extend(headers)
        return out

    def _reuse(self, t: Target) -> _Connection | None:
        idle = self._idle.get(t.origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have gone stale
            if conn.reusable and now - conn.idle_since < self.keepalive:
                return conn
            conn.abort()
        return None

    def _release(self, t: Target, conn: _Connection) -> None:
        if self._closed or not conn.reusable:
            conn.abort()
            return
        idle = self._idle.setdefault(t.origin, collections.deque())
        idle.append(conn)
        while len(idle) > self.max_idle_per_origin:
            idle.popleft().abort()

    async def _open(self, t: Target) -> _Connection:
        host: str = t.host
        if not self.allow_private:
            why = ssrf.name_refusal(t.host)
            if why is not None:
                raise RefusedAddress(f"refused: {why}")
            try:
                addresses = await ssrf.resolve(t.host, t.port)
            except OSError as exc:
                raise ConnectError(f"{t.host} does not resolve: {exc}") from exc
            why = ssrf.first_refusal(addresses)
            if why is not None:
                raise RefusedAddress(f"refused: {why}")
            if not addresses:
                raise ConnectError(f"{t.host} resolves to no address")
            host = str(addresses[0])
        loop = asyncio.get_running_loop()
        tls = self.tls if t.scheme == "https" else None
        try:
            _, conn = await loop.create_connection(
                _Connection, host, t.port, ssl=tls, server_hostname=t.host if tls is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{t.host}:{t.port}: {exc.strerror or exc}") from exc
        return conn

    def sweep(self) -> None:
        """Close idle connections past `keepalive` or closed by their server."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if c.reusable and now - c.idle_since < self.keepalive]
            for c in idle:
                if c not in keep:
                    c.abort()
            if keep:
                self._idle[origin] = collections.deque(keep)
            else:
                del self._idle[origin]

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
