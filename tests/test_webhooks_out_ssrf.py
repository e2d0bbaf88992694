"""The SSRF guard: refused at creation (production default) and on every delivery connection."""

from __future__ import annotations

import ipaddress

import pytest

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput
from ledgerx.domain.webhooks import endpoints, outbox, ssrf
from ledgerx.domain.webhooks.delivery import DeliveryPolicy, DeliveryWorker
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.ledger_helpers import new_project
from tests.tenancy_helpers import owner_sql
from tests.webhooks_out_receiver import running_receiver

ACTOR = Actor.system("test")

REFUSED = [
    "127.0.0.1",
    "127.1.2.3",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (carrier NAT; Alibaba's metadata lives at 100.100.100.200)
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6 (unique local)
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]
ALLOWED = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.5/",
        "https://localhost/hook",
        "http://api.localhost/hook",
        "http://metadata.google.internal/",
        "http://2130706433/",  # 127.0.0.1 as one number: refused once resolved
        "http://0x7f.1/",
    ],
)
async def test_creation_refuses_urls_reaching_this_network(url: str) -> None:
    with pytest.raises(BadInput) as caught:
        await ssrf.check_url(url, allow_private=False)
    assert caught.value.field == "url"
    assert caught.value.extra["reason"] in ("PRIVATE_ADDRESS", "UNRESOLVABLE_HOST")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "http:///nohost", "not a url", "", "http://x:99999/"],
)
async def test_only_http_and_https_urls(url: str) -> None:
    with pytest.raises(BadInput) as caught:
        await ssrf.check_url(url, allow_private=True)
    assert (caught.value.field, caught.value.extra["reason"]) == ("url", "INVALID_URL")


async def test_public_literal_and_development_private_urls_pass() -> None:
    assert await ssrf.check_url("https://93.184.215.14/hook", allow_private=False) == "https://93.184.215.14/hook"
    assert await ssrf.check_url("http://127.0.0.1:9/hook", allow_private=True) == "http://127.0.0.1:9/hook"


def test_private_addresses_are_allowed_by_default_only_in_development() -> None:
    dev = Settings.from_env({})
    prod_env = {
        "LEDGERX_ENV": "production",
        "DATABASE_URL": "postgresql://x@h/db",
        "REDIS_URL": "redis://h:6379/0",
        "JWT_PRIVATE_KEYS": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----",
    }
    assert dev.outbound_webhook_allow_private is True
    assert Settings.from_env(prod_env).outbound_webhook_allow_private is False
    assert Settings.from_env({**prod_env, "OUTBOUND_WEBHOOK_ALLOW_PRIVATE": "true"}).outbound_webhook_allow_private
    custom = Settings.from_env({"OUTBOUND_WEBHOOK_RETRY_DELAYS": "1s,2m", "OUTBOUND_WEBHOOK_TIMEOUT": "3"})
    assert (custom.outbound_webhook_retry_delays, custom.outbound_webhook_timeout) == ((1, 120), 3.0)
    assert dev.outbound_webhook_retry_delays == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert (dev.outbound_webhook_timeout, dev.outbound_webhook_disable_after) == (10.0, 5 * 86400)


async def test_delivery_refuses_an_address_that_became_private(services: Services) -> None:
    """A URL accepted earlier (DNS can change) is checked again on every connection."""
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as receiver:
        pid = await new_project(services)
        issued = await endpoints.create(services.db, ACTOR, pid, url=receiver.url(), events=["*"], allow_private=True)
        async with services.db.transaction(project_id=pid) as s:
            event_id = await outbox.emit(s, pid, "invoice.paid", {"id": "ivc_1"})
        guarded = DeliveryWorker(services.db, DeliveryPolicy(allow_private=False, retry_delays=(60,)))
        try:
            assert await guarded.run_once() == 1
        finally:
            await guarded.stop()
        assert receiver.received == []
        [row] = await owner_sql(services.settings, "SELECT * FROM webhook_deliveries WHERE event_id = $1", event_id)
        assert row["status"] == "PENDING" and row["attempts"] == 1
        assert "refused: 127.0.0.1 is a loopback address" in row["last_error"], row["last_error"]
        assert ids.encode("webhook_endpoint", issued.endpoint.id).startswith("whk_")
        await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE id = $1", row["id"])
