"""The transport under the generated operations: auth, retries, typed errors, subscriptions.

Retries: a network error, HTTP 429 or HTTP 503 is tried again, at most `RetryPolicy.max_attempts`
times in all, after `Retry-After` when the server sent one, else an exponential backoff with
jitter. The request is sent again byte for byte, so a money mutation carries the same idempotency
key and the server answers the retry with the transaction it already posted. A network error on a
mutation without an idempotency key is retried only when the request cannot have reached the
server (the connection was never made). Other 4xx answers and GraphQL errors are never retried:
they raise the `LedgerXError` subclass of their code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import email.utils
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import httpx

from ledgerx_client._version import __version__
from ledgerx_client.errors import (
    ERRORS,
    ForbiddenError,
    LedgerXError,
    NetworkError,
    SubscriptionClosedError,
    UnauthenticatedError,
    error_from,
)

USER_AGENT = f"ledgerx-client-python/{__version__}"
_NOT_RETRIED_503 = {"PAYMENTS_NOT_CONFIGURED", "PAYMENT_PROVIDER_ERROR"}


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Leave out arguments not given (None), so the server's defaults apply."""
    return {k: v for k, v in values.items() if v is not None}


def _json_default(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise TypeError("datetimes sent to LedgerX need a time zone")
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(payload: object) -> bytes:
    return json.dumps(payload, default=_json_default, separators=(",", ":"), ensure_ascii=False).encode()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry network errors, 429 and 503."""

    max_attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after) + random.uniform(0, self.backoff / 2)
        base: float = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)


@dataclasses.dataclass(frozen=True)
class RetryEvent:
    """Passed to `on_retry` before each wait: which attempt failed, why, and the wait."""

    attempt: int
    reason: str  # "network" | "429" | "503"
    delay: float
    error: BaseException | None = None


@dataclasses.dataclass
class Answer:
    status: int
    body: Any
    retry_after: float | None

    @property
    def code(self) -> str | None:
        body = self.body
        if isinstance(body, Mapping):
            if isinstance(body.get("error"), Mapping):
                code = body["error"].get("code")
                return code if isinstance(code, str) else None
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
                ext = errors[0].get("extensions")
                if isinstance(ext, Mapping) and isinstance(ext.get("code"), str):
                    return str(ext["code"])
        return None

    def retryable(self) -> bool:
        return self.status == 429 or (self.status == 503 and self.code not in _NOT_RETRIED_503)

    def error(self) -> LedgerXError:
        body = self.body
        if isinstance(body, Mapping):
            if isinstance(body.get("error"), Mapping):
                return error_from(body["error"], self.status, retry_after=self.retry_after)
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
                err = error_from(errors[0], self.status, retry_after=self.retry_after)
                if len(errors) > 1:
                    err.extensions.setdefault("otherErrors", errors[1:])
                return err
        code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMITED"}.get(
            self.status, "INTERNAL"
        )
        cls = ERRORS.get(code, LedgerXError)
        ext: dict[str, Any] = {"code": code}
        if self.retry_after is not None:
            ext["retryAfter"] = self.retry_after
        return cls(f"HTTP {self.status}", code=code, extensions=ext, status=self.status)

    def graphql(self, root: str) -> Any:
        body = self.body
        if self.status >= 400 or not isinstance(body, Mapping) or body.get("errors"):
            raise self.error()
        data = body.get("data")
        if not isinstance(data, Mapping) or root not in data:
            raise LedgerXError(f"the answer has no {root}", status=self.status)
        return data[root]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _answer(response: httpx.Response) -> Answer:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, _retry_after(response))


def _never_sent(exc: httpx.TransportError) -> bool:
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class _Config:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        access_token: str | None,
        retry: RetryPolicy | None,
        on_retry: Callable[[RetryEvent], None] | None,
    ) -> None:
        if api_key and access_token:
            raise ValueError("give api_key or access_token, not both")
        self.base_url = base_url.rstrip("/")
        self.credential = api_key or access_token
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": USER_AGENT, "Accept": "application/json", "Content-Type": "application/json"}
        if self.credential:
            h["Authorization"] = f"Bearer {self.credential}"
        return h

    @property
    def ws_url(self) -> str:
        url = self.base_url
        if url.startswith("https://"):
            url = "wss://" + url[len("https://") :]
        elif url.startswith("http://"):
            url = "ws://" + url[len("http://") :]
        return url + "/graphql"

    def init_payload(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"} if self.credential else {}

    def network_retry(self, attempt: int, idempotent: bool, exc: httpx.TransportError) -> float:
        """The wait before retrying a network error; raises NetworkError when it is not retried."""
        if attempt >= self.retry.max_attempts or not (idempotent or _never_sent(exc)):
            raise NetworkError(f"{type(exc).__name__}: {exc or 'no answer'}", code="NETWORK_ERROR") from exc
        return self.notify(RetryEvent(attempt, "network", self.retry.delay(attempt, None), exc))

    def status_retry(self, attempt: int, answer: Answer) -> float | None:
        """The wait before retrying a 429/503, or None when the answer stands."""
        if not answer.retryable() or attempt >= self.retry.max_attempts:
            return None
        return self.notify(RetryEvent(attempt, str(answer.status), self.retry.delay(attempt, answer.retry_after)))

    def notify(self, event: RetryEvent) -> float:
        if self.on_retry is not None:
            self.on_retry(event)
        return event.delay

    @staticmethod
    def subscribe_message(document: str, operation: str, variables: dict[str, Any]) -> str:
        payload = {"query": document, "variables": variables, "operationName": operation}
        return encode({"id": "1", "type": "subscribe", "payload": payload}).decode()

    @staticmethod
    def on_message(raw: str | bytes, root: str) -> tuple[str, Any]:
        """One graphql-transport-ws message: ("ping"|"ack"|"next"|"complete"|"other", data)."""
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "ping":
            return "ping", None
        if kind == "connection_ack":
            return "ack", None
        if kind == "next":
            payload = msg.get("payload") or {}
            if payload.get("errors"):
                raise Answer(200, payload, None).error()
            return "next", (payload.get("data") or {}).get(root)
        if kind == "error":
            raise Answer(200, {"errors": msg.get("payload") or []}, None).error()
        if kind == "complete":
            return "complete", None
        return "other", None

    @staticmethod
    def closed(code: int | None, reason: str) -> LedgerXError:
        ext = {"closeCode": code, "reason": reason}
        if code == 4401:
            return UnauthenticatedError(reason or "the credential expired or was revoked", extensions=ext)
        if code == 4403:
            return ForbiddenError(reason or "forbidden", extensions=ext)
        return SubscriptionClosedError(f"the subscription's socket closed ({code}: {reason})", extensions=ext)


class SyncBaseClient:
    """Blocking transport (httpx.Client; subscriptions with websockets' sync client)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _Config(base_url, api_key, access_token, retry, on_retry)
        self._http = httpx.Client(
            base_url=self._config.base_url, headers=self._config.headers(), timeout=timeout, transport=transport
        )
        self._timeout = timeout

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncBaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, payload: object, *, idempotent: bool, retry_status: bool = True) -> Answer:
        content = encode(payload)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.post(path, content=content)
            except httpx.TransportError as exc:
                time.sleep(self._config.network_retry(attempt, idempotent, exc))
                continue
            answer = _answer(response)
            wait = self._config.status_retry(attempt, answer) if retry_status else None
            if wait is None:
                return answer
            time.sleep(wait)

    def _execute(self, document: str, operation: str, variables: dict[str, Any], root: str, *, idempotent: bool) -> Any:
        payload = {"query": document, "variables": variables, "operationName": operation}
        return self._post("/graphql", payload, idempotent=idempotent).graphql(root)

    def _subscribe(self, document: str, operation: str, variables: dict[str, Any], root: str) -> Iterator[Any]:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        config = self._config
        try:
            with connect(
                config.ws_url,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                open_timeout=self._timeout,
                user_agent_header=USER_AGENT,
            ) as ws:
                ws.send(encode({"type": "connection_init", "payload": config.init_payload()}).decode())
                subscribed = False
                try:
                    while True:
                        kind, data = config.on_message(ws.recv(), root)
                        if kind == "ping":
                            ws.send('{"type":"pong"}')
                        elif kind == "ack" and not subscribed:
                            ws.send(config.subscribe_message(document, operation, variables))
                            subscribed = True
                        elif kind == "next":
                            yield data
                        elif kind == "complete":
                            return
                finally:
                    if subscribed:
                        with contextlib.suppress(ConnectionClosed):
                            ws.send('{"id":"1","type":"complete"}')
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 1000:
                return
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise config.closed(code, exc.rcvd.reason if exc.rcvd is not None else "") from exc
        except OSError as exc:
            raise NetworkError(f"{type(exc).__name__}: {exc}") from exc


class AsyncBaseClient:
    """asyncio transport (httpx.AsyncClient; subscriptions with websockets' asyncio client)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = _Config(base_url, api_key, access_token, retry, on_retry)
        self._http = httpx.AsyncClient(
            base_url=self._config.base_url, headers=self._config.headers(), timeout=timeout, transport=transport
        )
        self._timeout = timeout

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBaseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _post(self, path: str, payload: object, *, idempotent: bool, retry_status: bool = True) -> Answer:
        content = encode(payload)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post(path, content=content)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._config.network_retry(attempt, idempotent, exc))
                continue
            answer = _answer(response)
            wait = self._config.status_retry(attempt, answer) if retry_status else None
            if wait is None:
                return answer
            await asyncio.sleep(wait)

    async def _execute(
        self, document: str, operation: str, variables: dict[str, Any], root: str, *, idempotent: bool
    ) -> Any:
        payload = {"query": document, "variables": variables, "operationName": operation}
        return (await self._post("/graphql", payload, idempotent=idempotent)).graphql(root)

    async def _subscribe(
        self, document: str, operation: str, variables: dict[str, Any], root: str
    ) -> AsyncIterator[Any]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed
        from websockets.typing import Subprotocol

        config = self._config
        try:
            async with connect(
                config.ws_url,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                open_timeout=self._timeout,
                user_agent_header=USER_AGENT,
            ) as ws:
                await ws.send(encode({"type": "connection_init", "payload": config.init_payload()}).decode())
                subscribed = False
                try:
                    while True:
                        kind, data = config.on_message(await ws.recv(), root)
                        if kind == "ping":
                            await ws.send('{"type":"pong"}')
                        elif kind == "ack" and not subscribed:
                            await ws.send(config.subscribe_message(document, operation, variables))
                            subscribed = True
                        elif kind == "next":
                            yield data
                        elif kind == "complete":
                            return
                finally:
                    if subscribed:
                        with contextlib.suppress(ConnectionClosed):
                            await ws.send('{"id":"1","type":"complete"}')
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 1000:
                return
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise config.closed(code, exc.rcvd.reason if exc.rcvd is not None else "") from exc
        except OSError as exc:
            raise NetworkError(f"{type(exc).__name__}: {exc}") from exc
