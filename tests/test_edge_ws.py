"""The websocket edge: bad documents get an `error` message with a code, the socket stays open."""

from __future__ import annotations

import httpx

from tests.conftest import GQL, LiveServer, sign_up
from tests.test_edge_cost import doubling_fragments
from tests.test_live_support import WsClient


async def test_bad_documents_get_error_messages_with_codes(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        user = await sign_up(GQL(c))
    ws = await WsClient.connect(live_server.ws_url, user.token)
    try:
        over_tokens = "{ " + "version " * 5_000 + "}"
        cases = {
            "syntax": "subscription { heartbeat",
            "tokens": over_tokens,
            "cost": doubling_fragments(20),
            "invalid": "subscription { nope }",
        }
        for name, document in cases.items():
            op = await ws.subscribe(document, op_id=name)
            msg = await ws.recv(op)
            assert msg["type"] == "error", (name, msg)
            assert msg["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT", (name, msg)
        # NUL in a variable: refused the same way as over HTTP.
        op = await ws.subscribe("query($t: String!) { peekInvite(token: $t) { role } }", {"t": "x\x00"}, op_id="nul")
        msg = await ws.recv(op)
        assert msg["type"] == "error", msg
        assert msg["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "t"}
        # The socket is still open and serves the next operation.
        op = await ws.subscribe("subscription { heartbeat }", op_id="ok")
        msg = await ws.recv(op)
        assert msg["type"] == "next", msg
        assert msg["payload"]["data"]["heartbeat"]
    finally:
        await ws.close()
