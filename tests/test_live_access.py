"""Live streams end when access ends: a member removed, a token expired, an admin demoted."""

from __future__ import annotations

import pytest

from ledgerx.domain import topics
from ledgerx.ids import decode
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import add_member, make_platform_admin, owner_sql
from tests.test_live_support import (
    LIVE_METRICS,
    LIVE_REVENUE,
    REMOVE_MEMBER,
    Closed,
    WsClient,
    ends_with,
    live_project,
    live_settings,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


async def test_stream_ends_when_the_member_is_removed(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    member = await add_member(gql, owner, p.project_id, "MEMBER")
    ws = await WsClient.connect(live_server.ws_url, member.token)
    owner_ws = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        owner_op = await owner_ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        assert (await ws.next_data(op, "liveMetrics"))["sequence"] == 1
        assert (await owner_ws.next_data(owner_op, "liveMetrics"))["sequence"] == 1
        await gql.ok(REMOVE_MEMBER, {"i": {"projectId": p.project_id, "userId": member.user_id}}, token=owner.token)
        await ends_with(ws, op, "NOT_FOUND")
        # The connection stays open (other operations may continue); the owner's stream goes on.
        assert ws.closed is None
        assert owner_ws.pending(owner_op) == [] or all(m["type"] == "next" for m in owner_ws.pending(owner_op))
        await gql.ok(
            "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
            {"i": {"walletId": p.wallet_id, "amount": 1, "idempotencyKey": "after-removal"}},
            token=owner.token,
        )
        await owner_ws.until(owner_op, "liveMetrics", lambda d: d["totalBalance"] == "1001")
    finally:
        await ws.close()
        await owner_ws.close()


async def test_a_membership_event_ends_the_stream_without_waiting_for_the_recheck(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    # Periodic re-checks are far away here: only the tenancy event can end the stream in time.
    live_server.services.live.recheck = 3600.0
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    member = await add_member(gql, owner, p.project_id, "MEMBER")
    ws = await WsClient.connect(live_server.ws_url, member.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        await ws.next_data(op, "liveMetrics")
        await gql.ok(REMOVE_MEMBER, {"i": {"projectId": p.project_id, "userId": member.user_id}}, token=owner.token)
        # What the tenancy domain publishes after commit (see docs/analytics.md).
        pid = decode("project", p.project_id)
        await live_server.services.events.publish(*topics.members_changed(pid, user_id=decode("user", member.user_id)))
        await ends_with(ws, op, "NOT_FOUND", wait=20)
    finally:
        await ws.close()


async def test_suspending_the_project_ends_a_members_stream(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    member = await add_member(gql, owner, p.project_id, "MEMBER")
    admin = await make_platform_admin(gql, settings)
    ws = await WsClient.connect(live_server.ws_url, member.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        await ws.next_data(op, "liveMetrics")
        await gql.ok(
            "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { id } }",
            {"i": {"projectId": p.project_id, "reason": "test"}},
            token=admin.token,
        )
        await ends_with(ws, op, "PROJECT_SUSPENDED")
    finally:
        await ws.close()


async def test_stream_ends_when_the_token_expires(gql: GQL, settings: Settings, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    # A token that lives two seconds, signed by the same keys.
    tokens = live_server.services.tokens
    old_ttl = tokens.ttl
    try:
        tokens.ttl = 2
        login = await gql.ok(
            "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }",
            {"i": {"email": owner.email, "password": owner.password}},
        )
    finally:
        tokens.ttl = old_ttl
    ws = await WsClient.connect(live_server.ws_url, login["logIn"]["accessToken"])
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        await ws.next_data(op, "liveMetrics")
        # Two mechanisms end it at the same instant: the operation's guard (an UNAUTHENTICATED
        # error, then complete) and the socket's expiry (close 4401). Which one the client sees
        # first is a race on a loaded machine; either way the stream ends because the token expired.
        closed: tuple[int | None, str | None] | None = None
        try:
            await ends_with(ws, op, "UNAUTHENTICATED", wait=10)
        except Closed as exc:
            closed = exc.args[0]
        if closed is not None:
            assert closed[0] == 4401 and "expired" in (closed[1] or ""), closed
    finally:
        await ws.close()


async def test_live_revenue_ends_when_the_admin_is_demoted(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    admin = await make_platform_admin(gql, settings)
    ws = await WsClient.connect(live_server.ws_url, admin.token)
    try:
        op = await ws.subscribe(LIVE_REVENUE, {"c": "USD"})
        await ws.next_data(op, "liveRevenue")
        await owner_sql(settings, "UPDATE users SET is_platform_admin = false WHERE email = $1", admin.email)
        await ends_with(ws, op, "FORBIDDEN")
    finally:
        await ws.close()
