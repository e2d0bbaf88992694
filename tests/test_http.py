"""The HTTP and websocket surface: routes, GraphQL-over-HTTP rules, headers, masking, ws auth."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from ledgerx.services import Services
from tests.conftest import GQL, LiveServer, sign_up


async def test_health_ready_metrics_jwks(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["kty"] == "EC"
    assert jwks["keys"][0]["kid"]
    m = await client.get("/metrics")
    assert m.status_code == 200
    assert "ledgerx_http_requests_total" in m.text


async def test_readyz_reports_a_dead_redis(client: httpx.AsyncClient, services: Services) -> None:
    from ledgerx.services import make_redis

    await services.redis.aclose()
    services.redis = make_redis("redis://127.0.0.1:1/0")  # nothing listens there
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["redis"].startswith("error")


async def test_security_headers_and_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-Id": "req-12345678"})
    assert r.headers["x-request-id"] == "req-12345678"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in r.headers  # plain http: HSTS would be meaningless
    generated = (await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})).headers["x-request-id"]
    assert generated != "bad id with spaces"
    assert len(generated) == 32


async def test_hsts_behind_tls(services: Services) -> None:
    from ledgerx.app import create_app

    transport = httpx.ASGITransport(app=create_app(services.settings, services))
    async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
        r = await c.get("/healthz")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_get_serves_queries_but_not_mutations(client: httpx.AsyncClient) -> None:
    r = await client.get("/graphql", params={"query": "{ version }"})
    assert r.status_code == 200
    assert r.json()["data"]["version"]
    r = await client.get("/graphql", params={"query": 'mutation { logOut(refreshToken: "x") }'})
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


async def test_non_json_body_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


async def test_graphql_response_media_type(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/graphql", json={"query": "{ version }"}, headers={"accept": "application/graphql-response+json"}
    )
    assert r.headers["content-type"].startswith("application/graphql-response+json")


async def test_validation_errors_carry_a_code(gql: GQL) -> None:
    err = await gql.error("{ nope }")
    assert err["code"] == "BAD_USER_INPUT"


async def test_depth_and_alias_limits(services: Services) -> None:
    import dataclasses

    from ledgerx.app import create_app

    s = dataclasses.replace(services.settings, graphql_max_depth=1, graphql_max_aliases=2)
    transport = httpx.ASGITransport(app=create_app(s, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        g = GQL(c)
        deep = 'mutation { logIn(input: {email: "a@b.co", password: "x"}) { user { id } } }'
        err = await g.error(deep)
        assert err["code"] == "BAD_USER_INPUT"
        assert "exceeds maximum operation depth" in err["message"]
        assert (await g.ok("{ version }"))["version"]
        err = await g.error("{ a: version b: version c: version }")
        assert err["code"] == "BAD_USER_INPUT"
        assert "aliases" in err["message"]


async def test_unexpected_errors_are_masked_with_the_request_id(
    gql: GQL, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    u = await sign_up(gql)

    async def boom(*_: object) -> None:
        raise RuntimeError("secret database detail")

    monkeypatch.setattr(services.auth, "get_user", boom)
    body = await gql("{ me { id } }", token=u.token, headers={"X-Request-Id": "trace-abcdef123"})
    err = body["errors"][0]
    assert err["extensions"] == {"code": "INTERNAL", "requestId": "trace-abcdef123"}
    assert "secret" not in json.dumps(body)


async def test_cors_allow_list(services: Services) -> None:
    import dataclasses

    from ledgerx.app import create_app

    s = dataclasses.replace(services.settings, cors_origins=("https://app.example.com",))
    transport = httpx.ASGITransport(app=create_app(s, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        pre = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
        ok = await c.options("/graphql", headers={"origin": "https://app.example.com", **pre})
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        bad = await c.options("/graphql", headers={"origin": "https://evil.example.com", **pre})
        assert "access-control-allow-origin" not in bad.headers
        # A browser's simple request gets its origin back; a backend's (no Origin) skips CORS but is
        # marked `Vary: Origin`, so no shared cache hands its answer to a browser.
        simple = await c.get("/healthz", headers={"origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "Origin" in simple.headers.get("vary", "")
        backend = await c.get("/healthz")
        assert "access-control-allow-origin" not in backend.headers
        assert backend.headers.get_list("vary") == ["Origin"]


async def _ws_init(
    url: str, payload: dict[str, object] | None
) -> tuple[websockets.ClientConnection, dict[str, object]]:
    ws = await websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_websocket_authenticated_in_connection_init(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        u = await sign_up(GQL(c))
    ws, ack = await _ws_init(live_server.ws_url, {"authorization": f"Bearer {u.token}"})
    try:
        assert ack["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "subscription { heartbeat }"}}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["type"] == "next"
        assert msg["id"] == "1"
        assert msg["payload"]["data"]["heartbeat"]
    finally:
        await ws.close()


@pytest.mark.parametrize("payload", [None, {"authorization": "Bearer not-a-token"}])
async def test_websocket_refused_without_valid_auth(live_server: LiveServer, payload: dict[str, object] | None) -> None:
    ws = await websockets.connect(live_server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_websocket_cross_origin_refused(live_server: LiveServer) -> None:
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(
            live_server.ws_url,
            subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
            origin=websockets.Origin("https://evil.example.com"),
        )
