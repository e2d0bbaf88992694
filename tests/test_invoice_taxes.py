"""Invoices with taxes end to end: GraphQL, the fake Stripe server and the signed Stripe route.

TAX_MODE=rates (seller in Germany unless a test says otherwise): platform admins define rates,
Checkout, subscription items and proration invoice items carry the matching Stripe TaxRate, and
LedgerX's invoice shows the same figures (subtotal, discount, per-line tax, total, number, frozen
billing details). Reverse charge, the unlocated buyer's fallback, coupons, TAX_MODE=stripe and
none, auto top-ups, replays and createTaxRate's refusals. Every invoice read here is checked to
add up (`assert_adds_up`).

Tax rates are platform-wide and the test database is shared by the session, so each test starts
and ends with no live rate (`world`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.invoicing import tax, tax_rates
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import top_up_intents
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import (
    FakeStripe,
    checkout,
    create_pack,
    create_plan,
    deliver,
    deliver_and_process,
    stripe_settings,
)
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
FEB1 = dt.datetime(2026, 2, 1, tzinfo=UTC)

TAX_RATE = "id name percentage inclusive country state archivedAt"
CREATE_RATE = f"mutation($i: CreateTaxRateInput!) {{ createTaxRate(input: $i) {{ {TAX_RATE} }} }}"
ARCHIVE_RATE = f"mutation($id: ID!) {{ archiveTaxRate(id: $id) {{ {TAX_RATE} }} }}"
RATES = f"query($a: Boolean!) {{ taxRates(includeArchived: $a) {{ {TAX_RATE} }} }}"
UPDATE_DETAILS = """
mutation($i: UpdateBillingDetailsInput!) { updateBillingDetails(input: $i) { legalName } }
"""
CREATE_COUPON = "mutation($i: CreateCouponInput!) { createCoupon(input: $i) { id code stripePromotionCodeId } }"
INVOICE_FIELDS = """
id kind status number issuedAt billingReason credits
subtotal { amount currency } discount { amount } tax { amount } total { amount } amountDue { amount }
amountPaid { amount }
taxLines { name rate inclusive amount { amount } }
taxNote amountCredited { amount } creditNotes { number total { amount } tax { amount } }
billingDetails { legalName address { line1 city state country } taxIds { type value } }
lines { kind description quantity unitAmount { amount } amount { amount } discount { amount } tax { amount }
  proration }
"""
INVOICES = f"query($p: ID!) {{ invoices(projectId: $p) {{ edges {{ node {{ {INVOICE_FIELDS} }} }} }} }}"
INVOICE = f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE_FIELDS} }} }}"
CHANGE = """
mutation($i: ChangePlanInput!) { changePlan(input: $i) { immediate prorationAmount { amount } invoice { id } } }
"""
WEBHOOK_EVENTS = """
query($t: String) { webhookEvents(type: $t, first: 100) { edges { node { id stripeEventId status } } } }
"""
REPLAY = "mutation($id: ID!) { replayWebhookEvent(id: $id) { id status } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
SET_TOP_UP = "mutation($i: SetAutoTopUpInput!) { setAutoTopUp(input: $i) { enabled } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { balanceAfter } }"

NUMBER = re.compile(r"LX-(\d{4})-\d{6}")
BERLIN = {"line1": "Hauptstraße 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
PARIS = {"line1": "1 rue de Rivoli", "city": "Paris", "postalCode": "75001", "country": "FR"}
FR_VAT = "FR4A123456789"  # the format of a French VAT number: a 2-character key, then a 9-digit SIREN


@pytest.fixture
def tax_mode() -> str:
    return "rates"  # tests parametrize it to run under another TAX_MODE


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe, tax_mode: str) -> Settings:
    return stripe_settings(settings, fake, tax_mode=tax_mode, seller_country="DE", seller_name="LedgerX GmbH")


async def _retire_rates(settings: Settings) -> None:
    await owner_sql(settings, "UPDATE tax_rates SET archived_at = now() WHERE archived_at IS NULL")


@dataclasses.dataclass
class World:
    gql: GQL
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    fake: FakeStripe
    admin: SignedIn
    owner: SignedIn
    projects: list[str]

    async def rate(
        self, name: str, percentage: str, country: str, *, inclusive: bool = False, state: str | None = None
    ) -> dict[str, Any]:
        i = {"name": name, "percentage": percentage, "inclusive": inclusive, "country": country, "state": state}
        return dict((await self.gql.ok(CREATE_RATE, {"i": i}, token=self.admin.token))["createTaxRate"])

    async def project(self, address: dict[str, Any] | None = None, tax_ids: list[dict[str, str]] | None = None) -> str:
        pid = await create_project(self.gql, self.owner)
        self.projects.append(pid)
        if address is not None or tax_ids:
            i: dict[str, Any] = {"projectId": pid, "legalName": "Buyer Ltd", "address": address}
            if tax_ids:
                i["taxIds"] = tax_ids
            await self.gql.ok(UPDATE_DETAILS, {"i": i}, token=self.owner.token)
        return pid

    async def send(self, *events: dict[str, Any]) -> None:
        await deliver_and_process(self.client, self.services, *events)

    async def buy(self, project_id: str, pack_id: str, **extra: str) -> str:
        """A credit pack through Checkout, paid; the session id."""
        sid = await checkout(self.gql, self.owner, project_id, creditPackId=pack_id, **extra)
        await self.send(*self.fake.complete_checkout(sid))
        return sid

    async def invoices(self, project_id: str) -> list[dict[str, Any]]:
        """The project's invoices, oldest first, each checked to add up."""
        data = await self.gql.ok(INVOICES, {"p": project_id}, token=self.owner.token)
        found = [e["node"] for e in data["invoices"]["edges"]][::-1]
        for inv in found:
            assert_adds_up(inv)
        return found

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        inv: dict[str, Any] = (await self.gql.ok(INVOICE, {"id": invoice_id}, token=self.owner.token))["invoice"]
        assert_adds_up(inv)
        return inv


@pytest.fixture
async def world(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> AsyncIterator[World]:
    await _retire_rates(settings)
    admin = await make_platform_admin(gql, settings)
    owner = await sign_up(gql)
    w = World(gql, client, services, settings, fake, admin, owner, [])
    try:
        yield w
        for p in w.projects:
            report = await verify_ledger(services.ledger, ids.decode("project", p))
            assert report.ok, report.mismatches
    finally:
        await _retire_rates(settings)


def amount(money: dict[str, Any]) -> int:
    return int(money["amount"])


def assert_adds_up(inv: dict[str, Any]) -> None:
    """The invoice's figures are the sums of its lines: subtotal - discount + exclusive tax == total."""
    items = [x for x in inv["lines"] if x["kind"] == "ITEM"]
    discounts = [x for x in inv["lines"] if x["kind"] == "DISCOUNT"]
    subtotal, discount, tax_total, total = (amount(inv[k]) for k in ("subtotal", "discount", "tax", "total"))
    assert sum(amount(x["amount"]) for x in items) == subtotal
    assert sum(amount(x["discount"]) for x in items) == discount
    assert -sum(amount(x["amount"]) for x in discounts) == discount
    assert sum(amount(x["tax"]) for x in inv["lines"]) == tax_total
    assert sum(amount(t["amount"]) for t in inv["taxLines"]) == tax_total
    exclusive = all(not t["inclusive"] for t in inv["taxLines"])
    assert subtotal - discount + (tax_total if exclusive else 0) == total
    for x in items:
        assert amount(x["unitAmount"]) * x["quantity"] == amount(x["amount"])


def tax_lines(inv: dict[str, Any]) -> list[tuple[str, decimal.Decimal, bool, int]]:
    return [(t["name"], decimal.Decimal(t["rate"]), t["inclusive"], amount(t["amount"])) for t in inv["taxLines"]]


def figures(inv: dict[str, Any]) -> tuple[int, int, int, int]:
    return amount(inv["subtotal"]), amount(inv["discount"]), amount(inv["tax"]), amount(inv["total"])


def assert_numbered(inv: dict[str, Any]) -> None:
    assert inv["issuedAt"] is not None
    m = NUMBER.fullmatch(inv["number"] or "")
    assert m is not None, inv["number"]
    # The year of the number is the year of the issue instant (both the database's clock, UTC).
    assert int(m.group(1)) == dt.datetime.fromisoformat(inv["issuedAt"]).astimezone(UTC).year


def session_line(fake: FakeStripe) -> dict[str, Any]:
    call = fake.calls_to("POST", "checkout/sessions")[-1]
    line: dict[str, Any] = call.params["line_items"][0]
    return line


# -- TAX_MODE=rates: credit packs --------------------------------------------------------------------------


async def test_german_buyer_pays_exclusive_vat_and_the_invoice_is_frozen(world: World) -> None:
    w = world
    de = await w.rate("VAT", "19", "DE")
    await w.rate("TVA", "20", "FR", inclusive=True)
    assert (de["percentage"], de["inclusive"], de["country"], de["state"]) == ("19", False, "DE", None)
    # Mirrored to Stripe as a TaxRate.
    (stripe_rate,) = [r for r in w.fake.of_type("tax_rate") if r["metadata"].get("ledgerx_tax_rate") == de["id"]]
    assert (stripe_rate["percentage"], stripe_rate["inclusive"], stripe_rate["country"]) == (19.0, False, "DE")
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)

    sid = await w.buy(pid, pack)
    assert session_line(w.fake)["tax_rates"] == [stripe_rate["id"]]
    assert w.fake.calls_to("POST", "checkout/sessions")[-1].params["metadata"]["ledgerx_tax"] == de["id"]
    assert w.fake.get(sid)["amount_total"] == 5831
    assert w.fake.charge_of_session(sid)["amount"] == 5831

    (inv,) = await w.invoices(pid)
    assert (inv["kind"], inv["status"], inv["billingReason"], inv["credits"]) == (
        "CREDIT_PACK",
        "PAID",
        "credit_pack",
        "5000",
    )
    assert figures(inv) == (4900, 0, 931, 5831)
    assert inv["subtotal"]["currency"] == "USD"
    assert (amount(inv["amountDue"]), amount(inv["amountPaid"])) == (5831, 5831)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, 931)]
    assert inv["taxNote"] is None
    (line,) = inv["lines"]
    assert line["kind"] == "ITEM" and line["description"] == "5000 credits (5,000 credits)"
    assert (line["quantity"], amount(line["unitAmount"]), amount(line["amount"])) == (1, 4900, 4900)
    assert (amount(line["discount"]), amount(line["tax"])) == (0, 931)
    assert_numbered(inv)
    frozen = {
        "legalName": "Buyer Ltd",
        "address": {"line1": "Hauptstraße 1", "city": "Berlin", "state": None, "country": "DE"},
        "taxIds": [],
    }
    assert inv["billingDetails"] == frozen

    # Later changes to the billing details leave the issued invoice as it was.
    i = {"projectId": pid, "legalName": "Renamed AG", "address": {**BERLIN, "city": "München", "postalCode": "80331"}}
    await w.gql.ok(UPDATE_DETAILS, {"i": i}, token=w.owner.token)
    again = await w.invoice(inv["id"])
    assert again["billingDetails"] == frozen
    assert (again["number"], again["issuedAt"]) == (inv["number"], inv["issuedAt"])


async def test_inclusive_rate_takes_the_tax_out_of_the_price(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    fr = await w.rate("TVA", "20", "FR", inclusive=True)
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(PARIS)
    sid = await w.buy(pid, pack)
    (stripe_rate,) = [r for r in w.fake.of_type("tax_rate") if r["metadata"].get("ledgerx_tax_rate") == fr["id"]]
    assert session_line(w.fake)["tax_rates"] == [stripe_rate["id"]]
    assert w.fake.charge_of_session(sid)["amount"] == 4900  # the price includes the tax
    (inv,) = await w.invoices(pid)
    # 4900 * 20 / 120 = 816.67
    assert tax.round_half_even(4900 * 20, 120) == 817
    assert figures(inv) == (4900, 0, 817, 4900)
    assert tax_lines(inv) == [("TVA", decimal.Decimal(20), True, 817)]
    assert [amount(x["tax"]) for x in inv["lines"]] == [817]
    assert_numbered(inv)


async def test_the_rate_of_the_state_beats_the_country_wide_one(world: World) -> None:
    w = world
    ca = await w.rate("Sales tax", "7.25", "US", state="CA")
    us = await w.rate("Sales tax", "0", "US")
    assert (ca["percentage"], ca["state"], us["percentage"], us["state"]) == ("7.25", "CA", "0", None)
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    california = await w.project({"line1": "1 Market St", "city": "San Francisco", "state": "ca", "country": "US"})
    new_york = await w.project({"line1": "1 Broadway", "city": "New York", "state": "NY", "country": "US"})

    sid = await w.buy(california, pack)
    stripe_ids = {r["metadata"]["ledgerx_tax_rate"]: r["id"] for r in w.fake.of_type("tax_rate")}
    assert session_line(w.fake)["tax_rates"] == [stripe_ids[ca["id"]]]
    assert w.fake.charge_of_session(sid)["amount"] == 5255
    (inv,) = await w.invoices(california)
    assert figures(inv) == (4900, 0, 355, 5255)  # 355.25
    assert tax_lines(inv) == [("Sales tax", decimal.Decimal("7.25"), False, 355)]
    # The buyer wrote "ca": a state matches its rate whatever the case.

    sid = await w.buy(new_york, pack)
    assert session_line(w.fake)["tax_rates"] == [stripe_ids[us["id"]]]
    assert w.fake.charge_of_session(sid)["amount"] == 4900
    (inv,) = await w.invoices(new_york)
    # A 0 % rate still prints its line.
    assert figures(inv) == (4900, 0, 0, 4900)
    assert tax_lines(inv) == [("Sales tax", decimal.Decimal(0), False, 0)]


async def test_reverse_charge_for_an_eu_business_and_the_normal_rate_for_a_malformed_vat_id(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    fr = await w.rate("TVA", "20", "FR")
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    business = await w.project(PARIS, [{"type": "eu_vat", "value": FR_VAT}])
    sid = await w.buy(business, pack)
    call = w.fake.calls_to("POST", "checkout/sessions")[-1]
    assert "tax_rates" not in call.params["line_items"][0]
    assert call.params["metadata"]["ledgerx_tax"] == "reverse_charge"
    assert w.fake.charge_of_session(sid)["amount"] == 4900
    (inv,) = await w.invoices(business)
    assert figures(inv) == (4900, 0, 0, 4900)
    assert tax_lines(inv) == [("Reverse charge", decimal.Decimal(0), False, 0)]
    assert inv["taxNote"] == tax.REVERSE_CHARGE_NOTE
    assert inv["billingDetails"]["taxIds"] == [{"type": "eu_vat", "value": FR_VAT}]
    assert_numbered(inv)

    # A VAT id that does not look French: taxed like any French buyer.
    malformed = await w.project(PARIS, [{"type": "eu_vat", "value": "FR123"}])
    sid = await w.buy(malformed, pack)
    stripe_ids = {r["metadata"]["ledgerx_tax_rate"]: r["id"] for r in w.fake.of_type("tax_rate")}
    assert session_line(w.fake)["tax_rates"] == [stripe_ids[fr["id"]]]
    assert w.fake.charge_of_session(sid)["amount"] == 5880
    (inv,) = await w.invoices(malformed)
    assert figures(inv) == (4900, 0, 980, 5880)
    assert tax_lines(inv) == [("TVA", decimal.Decimal(20), False, 980)]
    assert inv["taxNote"] is None


async def test_a_buyer_without_a_country_is_taxed_at_the_sellers_rate(world: World) -> None:
    w = world
    de = await w.rate("VAT", "19", "DE")
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    pid = await w.project()  # no billing details at all
    sid = await w.buy(pid, pack)
    stripe_ids = {r["metadata"]["ledgerx_tax_rate"]: r["id"] for r in w.fake.of_type("tax_rate")}
    assert session_line(w.fake)["tax_rates"] == [stripe_ids[de["id"]]]
    assert w.fake.charge_of_session(sid)["amount"] == 1190
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (1000, 0, 190, 1190)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, 190)]
    assert inv["billingDetails"] is None and inv["taxNote"] is None


async def unlocated_without_a_sellers_rate(w: World) -> dict[str, Any]:
    """The invoice of a pack bought by a buyer with no billing country, with no rate for DE."""
    await w.rate("TVA", "20", "FR")  # no rate for SELLER_COUNTRY=DE
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    pid = await w.project()
    sid = await w.buy(pid, pack)
    call = w.fake.calls_to("POST", "checkout/sessions")[-1]
    assert "tax_rates" not in call.params["line_items"][0]
    assert call.params["metadata"]["ledgerx_tax"] == "unlocated"
    assert w.fake.charge_of_session(sid)["amount"] == 1000
    (inv,) = await w.invoices(pid)
    return inv


async def test_a_buyer_without_a_country_and_no_sellers_rate_pays_no_tax(world: World) -> None:
    inv = await unlocated_without_a_sellers_rate(world)
    assert figures(inv) == (1000, 0, 0, 1000)
    assert inv["taxLines"] == [] and [amount(x["tax"]) for x in inv["lines"]] == [0]
    assert_numbered(inv)


async def test_a_buyer_without_a_country_and_no_sellers_rate_is_told_why(world: World) -> None:
    inv = await unlocated_without_a_sellers_rate(world)
    assert inv["taxNote"] == tax_rates.UNLOCATED_NOTE


async def test_a_coupon_is_a_discount_line_and_the_tax_applies_after_it(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    code = f"TAX-{uuid.uuid4().hex[:8]}".upper()
    coupon = (
        await w.gql.ok(CREATE_COUPON, {"i": {"code": code, "name": "Spring", "percentOff": 25}}, token=w.admin.token)
    )["createCoupon"]
    pid = await w.project(BERLIN)
    sid = await w.buy(pid, pack, couponCode=code)
    sess = w.fake.get(sid)
    # 25 % of 4900 = 1225 off; 19 % of 3675 = 698.25.
    assert (sess["total_details"]["amount_discount"], sess["total_details"]["amount_tax"]) == (1225, 698)
    assert w.fake.charge_of_session(sid)["amount"] == 4373
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (4900, 1225, 698, 4373)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, 698)]
    item, disc = inv["lines"]
    assert (item["kind"], amount(item["amount"]), amount(item["discount"]), amount(item["tax"])) == (
        "ITEM",
        4900,
        1225,
        698,
    )
    assert (disc["kind"], amount(disc["amount"]), amount(disc["unitAmount"]), amount(disc["tax"])) == (
        "DISCOUNT",
        -1225,
        -1225,
        0,
    )
    assert disc["description"] == f"Coupon {coupon['code']}: Spring"


@pytest.mark.parametrize("tax_mode", ["stripe"])
async def test_stripe_tax_mode_copies_what_stripe_computed(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)
    sid = await w.buy(pid, pack)
    call = w.fake.calls_to("POST", "checkout/sessions")[-1]
    assert call.params["automatic_tax"] == {"enabled": "true"}
    assert "tax_rates" not in call.params["line_items"][0]
    assert "ledgerx_tax" not in call.params["metadata"]
    # The fake's Stripe Tax: 10 % on top.
    assert w.fake.charge_of_session(sid)["amount"] == 5390
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (4900, 0, 490, 5390)
    ((_, rate, inclusive, tax_amount),) = tax_lines(inv)
    assert (rate, inclusive, tax_amount) == (decimal.Decimal(10), False, 490)
    assert [amount(x["tax"]) for x in inv["lines"]] == [490]
    assert_numbered(inv)


@pytest.mark.parametrize("tax_mode", ["stripe"])
async def test_stripe_tax_mode_prints_the_tax_stripe_named(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)
    await w.buy(pid, pack)
    (inv,) = await w.invoices(pid)
    assert tax_lines(inv) == [("Sales tax", decimal.Decimal(10), False, 490)]


@pytest.mark.parametrize("tax_mode", ["stripe"])
async def test_stripe_tax_mode_auto_top_up_charges_the_price_without_tax(world: World) -> None:
    """Stripe Tax does not price a bare PaymentIntent (top_up_intents.py): the pack's price, no tax."""
    w = world
    pack = await create_pack(w.gql, w.admin, credits=500, amount=900)
    pid = await w.project(BERLIN)
    await low_wallet_with_auto_top_up(w, pid, pack)
    assert await top_up_intents.run_once(w.services.payments) == 1
    (intent,) = w.fake.calls_to("POST", "payment_intents")
    assert intent.params["amount"] == "900"
    await w.send(w.fake.last_event("payment_intent.succeeded"))
    pack_inv, top_up = await w.invoices(pid)
    assert figures(pack_inv) == (900, 0, 90, 990)  # the Checkout: Stripe Tax's 10 %
    assert (top_up["kind"], top_up["status"], figures(top_up)) == ("TOP_UP", "PAID", (900, 0, 0, 900))
    assert top_up["taxLines"] == []
    assert top_up["taxNote"] == "No tax: Stripe Tax does not price automatic top-ups (TAX_MODE=stripe)."
    assert_numbered(top_up)


async def test_ties_round_half_even_and_the_invoice_states_what_stripe_charged(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    pid = await w.project(BERLIN)
    # 19 % of 150 is 28.5 and of 50 is 9.5: to the even neighbour, 28 and 10.
    for price, expected_tax in ((150, 28), (50, 10)):
        pack = await create_pack(w.gql, w.admin, credits=price, amount=price)
        sid = await w.buy(pid, pack)
        assert w.fake.charge_of_session(sid)["amount"] == price + expected_tax
        inv = (await w.invoices(pid))[-1]
        assert figures(inv) == (price, 0, expected_tax, price + expected_tax)

    # Should Stripe round a tie the other way, the invoice states the charge (composing.charged).
    def half_up(net: int, rate: dict[str, Any]) -> int:
        exact = decimal.Decimal(net) * decimal.Decimal(str(rate["percentage"])) / 100
        return int(exact.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))

    monkeypatch.setattr(w.fake, "_tax_on", half_up)
    pack = await create_pack(w.gql, w.admin, credits=150, amount=150)
    sid = await w.buy(pid, pack)
    assert w.fake.charge_of_session(sid)["amount"] == 179
    inv = (await w.invoices(pid))[-1]
    assert figures(inv) == (150, 0, 29, 179)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, 29)]
    assert amount(inv["amountPaid"]) == 179


async def test_the_invoice_keeps_the_tax_charged_at_checkout_when_details_change_before_payment(
    world: World,
) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    await w.rate("TVA", "20", "FR", inclusive=True)
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)
    sid = await checkout(w.gql, w.owner, pid, creditPackId=pack)
    # The buyer moves to France (and gives a VAT id) while Checkout is open: the charge is German VAT.
    i = {"projectId": pid, "address": PARIS, "taxIds": [{"type": "eu_vat", "value": FR_VAT}]}
    await w.gql.ok(UPDATE_DETAILS, {"i": i}, token=w.owner.token)
    await w.send(*w.fake.complete_checkout(sid))
    assert w.fake.charge_of_session(sid)["amount"] == 5831
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (4900, 0, 931, 5831)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, 931)]
    assert inv["taxNote"] is None
    # The details frozen are those at the issue instant.
    assert inv["billingDetails"]["address"]["country"] == "FR"

    # The next Checkout follows the new details: reverse charge.
    sid = await w.buy(pid, pack)
    assert w.fake.charge_of_session(sid)["amount"] == 4900
    assert (await w.invoices(pid))[-1]["taxNote"] == tax.REVERSE_CHARGE_NOTE


@pytest.mark.parametrize("tax_mode", ["none"])
async def test_no_tax_mode_charges_and_prints_no_tax(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")  # defined, but TAX_MODE=none ignores it
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)
    sid = await w.buy(pid, pack)
    call = w.fake.calls_to("POST", "checkout/sessions")[-1]
    assert "tax_rates" not in call.params["line_items"][0] and "automatic_tax" not in call.params
    assert w.fake.charge_of_session(sid)["amount"] == 4900
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (4900, 0, 0, 4900)
    assert inv["taxLines"] == [] and inv["taxNote"] is None
    assert [amount(x["tax"]) for x in inv["lines"]] == [0]
    assert_numbered(inv)


async def test_replayed_events_issue_nothing_new(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900)
    pid = await w.project(BERLIN)
    sid = await checkout(w.gql, w.owner, pid, creditPackId=pack)
    (event,) = w.fake.complete_checkout(sid)
    await w.send(event)
    (first,) = await w.invoices(pid)
    assert_numbered(first)

    r = await deliver(w.client, event)  # Stripe delivers it again
    assert r.status_code == 200 and r.json()["duplicate"] is True
    await w.send(w.fake.event("checkout.session.completed", event["data"]["object"], record=False))  # a new event id
    data = await w.gql.ok(WEBHOOK_EVENTS, {"t": "checkout.session.completed"}, token=w.admin.token)
    (node,) = [e["node"] for e in data["webhookEvents"]["edges"] if e["node"]["stripeEventId"] == event["id"]]
    for _ in range(2):
        replayed = await w.gql.ok(REPLAY, {"id": node["id"]}, token=w.admin.token)
        assert replayed["replayWebhookEvent"]["status"] == "PROCESSED"
    assert await w.invoices(pid) == [first]
    rows = await owner_sql(
        w.settings, "SELECT count(*) AS n FROM invoices WHERE project_id = $1", ids.decode("project", pid)
    )
    assert rows[0]["n"] == 1


# -- TAX_MODE=rates: subscriptions, prorations, auto top-ups ---------------------------------------------------


class Clock:
    """One pinned instant for LedgerX's payments and the fake Stripe (proration amounts depend on it)."""

    def __init__(self, services: Services, fake: FakeStripe) -> None:
        self.fake = fake
        self.now = T0
        services.payments.clock = lambda: self.now
        self.at(T0)

    def at(self, when: dt.datetime) -> None:
        self.now = when
        self.fake.now = int(when.timestamp())


@pytest.fixture
async def plans(world: World) -> AsyncIterator[tuple[str, str]]:
    """Pro (2000/month) and Enterprise (5000/month); the catalog is global, so retired afterwards."""
    w = world
    try:
        pro = await create_plan(w.gql, w.admin, name="Taxed Pro", amount=2000, included=1000)
        ent = await create_plan(w.gql, w.admin, name="Taxed Ent", tier="ENTERPRISE", amount=5000, included=3000)
        yield pro, ent
    finally:
        await owner_sql(w.settings, "UPDATE plans SET archived_at = now() WHERE name LIKE 'Taxed %'")


async def test_subscription_periods_and_a_proration_are_taxed_with_the_rate(
    world: World, plans: tuple[str, str]
) -> None:
    w = world
    pro, ent = plans
    clock = Clock(w.services, w.fake)
    de = await w.rate("VAT", "19", "DE")
    stripe_rate = next(r["id"] for r in w.fake.of_type("tax_rate") if r["metadata"]["ledgerx_tax_rate"] == de["id"])
    pid = await w.project(BERLIN)

    sid = await checkout(w.gql, w.owner, pid, planId=pro)
    assert session_line(w.fake)["tax_rates"] == [stripe_rate]
    await w.send(*w.fake.complete_checkout(sid))
    sub_id = w.fake.get(sid)["subscription"]
    (first,) = await w.invoices(pid)
    assert (first["kind"], first["status"], first["billingReason"]) == ("SUBSCRIPTION", "PAID", "subscription_create")
    assert figures(first) == (2000, 0, 380, 2380)
    assert tax_lines(first) == [("VAT", decimal.Decimal(19), False, 380)]
    assert amount(first["amountPaid"]) == 2380
    assert_numbered(first)

    # The renewal is taxed alike (the subscription item keeps the rate), once however often delivered.
    clock.at(FEB1)
    renewal = w.fake.renew(sub_id)
    await w.send(*renewal, *renewal)
    first_again, second = await w.invoices(pid)
    assert first_again == first
    assert (second["billingReason"], figures(second)) == ("subscription_cycle", (2000, 0, 380, 2380))
    assert tax_lines(second) == [("VAT", decimal.Decimal(19), False, 380)]
    assert_numbered(second)
    assert second["number"] > first["number"]

    # An upgrade on the 11th at noon: 1984 prorated, 19 % on top (376.96).
    clock.at(dt.datetime(2026, 2, 11, 12, tzinfo=UTC))
    up = (await w.gql.ok(CHANGE, {"i": {"projectId": pid, "planId": ent}}, token=w.owner.token))["changePlan"]
    assert up["immediate"] is True
    prorated = amount(up["prorationAmount"])
    (item_call,) = w.fake.calls_to("POST", "invoiceitems")
    assert item_call.params["tax_rates"] == [stripe_rate]
    assert item_call.params["amount"] == str(prorated)
    proration_tax = tax.round_half_even(prorated * 19, 100)
    charged = w.fake.of_type("invoice")[-1]
    assert charged["total"] == prorated + proration_tax
    inv = await w.invoice(up["invoice"]["id"])
    assert (inv["kind"], inv["status"]) == ("PRORATION", "PAID")
    assert figures(inv) == (prorated, 0, proration_tax, prorated + proration_tax)
    assert tax_lines(inv) == [("VAT", decimal.Decimal(19), False, proration_tax)]
    assert [(x["proration"], amount(x["tax"])) for x in inv["lines"]] == [(True, proration_tax)]
    assert_numbered(inv)
    # Stripe's own invoice.paid of the charge adds no second invoice.
    await w.send(w.fake.event("invoice.paid", charged))
    assert len(await w.invoices(pid)) == 3


async def test_a_discounted_subscription_is_taxed_after_the_discount(world: World, plans: tuple[str, str]) -> None:
    w = world
    pro, _ = plans
    Clock(w.services, w.fake)
    await w.rate("VAT", "19", "DE")
    code = f"SUB-{uuid.uuid4().hex[:8]}".upper()
    await w.gql.ok(CREATE_COUPON, {"i": {"code": code, "name": "Launch", "percentOff": 25}}, token=w.admin.token)
    pid = await w.project(BERLIN)
    sid = await checkout(w.gql, w.owner, pid, planId=pro, couponCode=code)
    await w.send(*w.fake.complete_checkout(sid))
    (inv,) = await w.invoices(pid)
    # 2000 - 500, then 19 % of 1500.
    assert figures(inv) == (2000, 500, 285, 1785)
    assert amount(inv["amountPaid"]) == 1785
    assert [(x["kind"], amount(x["amount"]), amount(x["tax"])) for x in inv["lines"]] == [
        ("ITEM", 2000, 285),
        ("DISCOUNT", -500, 0),
    ]
    assert_numbered(inv)


@pytest.mark.parametrize("tax_mode", ["stripe"])
async def test_stripe_tax_mode_subscription_invoices_copy_stripes_tax(world: World, plans: tuple[str, str]) -> None:
    w = world
    pro, _ = plans
    clock = Clock(w.services, w.fake)
    pid = await w.project(BERLIN)
    sid = await checkout(w.gql, w.owner, pid, planId=pro)
    assert w.fake.calls_to("POST", "checkout/sessions")[-1].params["automatic_tax"] == {"enabled": "true"}
    await w.send(*w.fake.complete_checkout(sid))
    clock.at(FEB1)
    await w.send(*w.fake.renew(w.fake.get(sid)["subscription"]))
    first, second = await w.invoices(pid)
    for inv in (first, second):
        assert figures(inv) == (2000, 0, 200, 2200)
        assert [(r, i, a) for _, r, i, a in tax_lines(inv)] == [(decimal.Decimal(10), False, 200)]
        assert_numbered(inv)


async def low_wallet_with_auto_top_up(w: World, pid: str, pack: str) -> None:
    """A Checkout of `pack` that saves the card, auto top-up below 300, then a debit to 250."""
    # The session's database is shared: other tests' wanted top-ups must not be claimed by this
    # test's round (they would be charged here and counted by `run_once`).
    await owner_sql(w.settings, "UPDATE auto_top_up_attempts SET status = 'SKIPPED' WHERE status = 'WANTED'")
    wallet = (await w.gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "main"}}, token=w.owner.token))[
        "createWallet"
    ]["id"]
    sid = await w.buy(pid, pack, walletId=wallet)
    await w.send(w.fake.intent_succeeded(w.fake.get(sid)["payment_intent"]))
    i = {"walletId": wallet, "enabled": True, "threshold": "300", "creditPackId": pack}
    await w.gql.ok(SET_TOP_UP, {"i": i}, token=w.owner.token)
    d = {"walletId": wallet, "amount": "250", "idempotencyKey": uuid.uuid4().hex}
    assert (await w.gql.ok(DEBIT, {"i": d}, token=w.owner.token))["debitWallet"]["balanceAfter"] == "250"


async def test_an_auto_top_up_charges_the_exclusive_tax_and_its_invoice_shows_it(world: World) -> None:
    w = world
    await w.rate("VAT", "19", "DE")
    pack = await create_pack(w.gql, w.admin, credits=500, amount=900)
    pid = await w.project(BERLIN)
    await low_wallet_with_auto_top_up(w, pid, pack)  # its pack invoice is taxed too: 900 + 171

    assert await top_up_intents.run_once(w.services.payments) == 1
    (intent,) = w.fake.calls_to("POST", "payment_intents")
    assert intent.params["amount"] == "1071"
    pending = [x for x in await w.invoices(pid) if x["kind"] == "TOP_UP"]
    (open_inv,) = pending
    assert (open_inv["status"], open_inv["number"], open_inv["issuedAt"]) == ("OPEN", None, None)
    assert figures(open_inv) == (900, 0, 171, 1071)

    paid = w.fake.last_event("payment_intent.succeeded")
    await w.send(paid, paid)
    pack_inv, top_up = await w.invoices(pid)
    assert (pack_inv["kind"], figures(pack_inv)) == ("CREDIT_PACK", (900, 0, 171, 1071))
    assert (top_up["id"], top_up["kind"], top_up["status"]) == (open_inv["id"], "TOP_UP", "PAID")
    assert figures(top_up) == (900, 0, 171, 1071)
    assert tax_lines(top_up) == [("VAT", decimal.Decimal(19), False, 171)]
    assert_numbered(top_up)
    assert top_up["number"] > pack_inv["number"]
    assert top_up["billingDetails"]["address"]["country"] == "DE"


# -- createTaxRate and archiveTaxRate ---------------------------------------------------------------------------


async def test_tax_rate_input_is_checked_and_one_live_rate_per_place(world: World) -> None:
    w = world
    good = {"name": "VAT", "percentage": "19", "inclusive": False, "country": "DE", "state": None}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"country": "XX"}, "country"),
        ({"country": ""}, "country"),
        ({"percentage": "101"}, "percentage"),
        ({"percentage": "-1"}, "percentage"),
        ({"percentage": "7.12345"}, "percentage"),
        ({"percentage": "abc"}, "percentage"),
        ({"percentage": "NaN"}, "percentage"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"name": "x" * 101}, "name"),
    ]
    for change, field in refused:
        ext = await w.gql.error(CREATE_RATE, {"i": {**good, **change}}, token=w.admin.token)
        assert (ext["code"], ext.get("field")) == ("BAD_USER_INPUT", field), (change, ext)
    assert (await w.gql.ok(RATES, {"a": False}, token=w.admin.token))["taxRates"] == []
    assert w.fake.of_type("tax_rate") == []  # nothing reached Stripe either

    # Non-admins may read the rates but not change them.
    ext = await w.gql.error(CREATE_RATE, {"i": good}, token=w.owner.token)
    assert ext["code"] == "FORBIDDEN"

    de = await w.rate("VAT", "19.5000", "de")
    assert (de["percentage"], de["country"]) == ("19.5", "DE")
    ca = await w.rate("Sales tax", "7.25", "US", state="CA")
    await w.rate("Sales tax", "6", "US", state="NY")  # another state is another place
    for i, field in (
        ({**good, "percentage": "7"}, "country"),
        ({**good, "country": "US", "state": "ca", "name": "Other"}, "country"),
    ):
        ext = await w.gql.error(CREATE_RATE, {"i": i}, token=w.admin.token)
        assert (ext["code"], ext.get("field")) == ("BAD_USER_INPUT", field), (i, ext)
    ext = await w.gql.error(ARCHIVE_RATE, {"id": de["id"]}, token=w.owner.token)
    assert ext["code"] == "FORBIDDEN"
    listed = (await w.gql.ok(RATES, {"a": False}, token=w.owner.token))["taxRates"]
    assert [(r["country"], r["state"], r["percentage"]) for r in listed] == [
        ("DE", None, "19.5"),
        ("US", "CA", "7.25"),
        ("US", "NY", "6"),
    ]

    # Archived: the place is free again; the archived rate stays listed on request; Stripe's is inactive.
    archived = (await w.gql.ok(ARCHIVE_RATE, {"id": de["id"]}, token=w.admin.token))["archiveTaxRate"]
    assert archived["archivedAt"] is not None
    stripe_de = next(r for r in w.fake.of_type("tax_rate") if r["metadata"]["ledgerx_tax_rate"] == de["id"])
    assert stripe_de["active"] is False
    again = await w.rate("VAT", "19", "DE")
    assert again["id"] != de["id"]
    ext = await w.gql.error(ARCHIVE_RATE, {"id": ids.encode("tax_rate", ids.uuid7())}, token=w.admin.token)
    assert (ext["code"], ext.get("field")) == ("NOT_FOUND", "id")
    everything = (await w.gql.ok(RATES, {"a": True}, token=w.admin.token))["taxRates"]
    assert {r["id"] for r in everything} >= {de["id"], again["id"], ca["id"]}
    live = (await w.gql.ok(RATES, {"a": False}, token=w.admin.token))["taxRates"]
    assert de["id"] not in {r["id"] for r in live} and again["id"] in {r["id"] for r in live}


async def test_tax_lines_print_the_rate_as_documented(world: World) -> None:
    """TaxLine.rate is documented as a decimal string where "20" is 20 %; the TaxRate type prints
    its percentage that way too."""
    w = world
    await w.rate("VAT", "19", "DE")
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    pid = await w.project(BERLIN)
    await w.buy(pid, pack)
    (inv,) = await w.invoices(pid)
    assert [t["rate"] for t in inv["taxLines"]] == ["19"]


REVENUE = """query($from: DateTime!, $to: DateTime!, $c: String!) {
  revenueAnalytics(from: $from, to: $to, granularity: DAY, currency: $c) { grossRevenue refunds netRevenue payments }
}"""


async def test_revenue_is_net_of_the_tax_collected(world: World) -> None:
    """Tax is collected for the tax authority: revenue counts the price, refunds the price given back."""
    w = world
    await w.rate("VAT", "19", "DE")
    # A currency no other test pays in, so the platform-wide figures are this test's alone.
    pack = await create_pack(w.gql, w.admin, credits=5000, amount=4900, currency="isk")
    pid = await w.project(BERLIN)
    sid = await w.buy(pid, pack)
    (inv,) = await w.invoices(pid)
    assert figures(inv) == (4900, 0, 931, 5831)
    charge = w.fake.charge_of_session(sid)["id"]
    await w.send(w.fake.refund(charge, 1166))  # a fifth of the 5831 paid: 933 of price, 233 of tax
    (inv,) = await w.invoices(pid)
    (note,) = inv["creditNotes"]
    assert (amount(note["total"]), amount(note["tax"])) == (1166, 186)
    now = dt.datetime.now(dt.UTC)
    span = {
        "from": (now - dt.timedelta(days=1)).isoformat(),
        "to": (now + dt.timedelta(days=1)).isoformat(),
        "c": "ISK",
    }
    got = (await w.gql.ok(REVENUE, span, token=w.admin.token))["revenueAnalytics"]
    assert (got["grossRevenue"], got["refunds"], got["netRevenue"], got["payments"]) == ("4900", "980", "3920", 1)


async def test_a_running_subscription_follows_its_buyers_tax(world: World, plans: tuple[str, str]) -> None:
    """A move to France with a VAT id (reverse charge), then back to Germany: each renewal is charged
    and invoiced with the tax the billing details call for when it renews."""
    w = world
    pro, _ = plans
    clock = Clock(w.services, w.fake)
    de = await w.rate("VAT", "19", "DE")
    stripe_de = next(r["id"] for r in w.fake.of_type("tax_rate") if r["metadata"]["ledgerx_tax_rate"] == de["id"])
    pid = await w.project(BERLIN)
    sid = await checkout(w.gql, w.owner, pid, planId=pro)
    await w.send(*w.fake.complete_checkout(sid))
    sub = w.fake.get(w.fake.get(sid)["subscription"])
    assert sub["items"]["data"][0]["tax_rates"] == [stripe_de]

    moved = {"projectId": pid, "address": PARIS, "taxIds": [{"type": "eu_vat", "value": FR_VAT}]}
    await w.gql.ok(UPDATE_DETAILS, {"i": moved}, token=w.owner.token)
    assert sub["items"]["data"][0]["tax_rates"] == []  # reverse charge: Stripe charges no tax
    assert sub["metadata"]["ledgerx_tax"] == "reverse_charge"
    clock.at(FEB1)
    await w.send(*w.fake.renew(sub["id"]))
    _, second = await w.invoices(pid)
    assert figures(second) == (2000, 0, 0, 2000)
    assert second["taxNote"] == tax.REVERSE_CHARGE_NOTE
    assert amount(second["amountPaid"]) == 2000

    back = {"projectId": pid, "address": BERLIN, "taxIds": []}
    await w.gql.ok(UPDATE_DETAILS, {"i": back}, token=w.owner.token)
    assert sub["items"]["data"][0]["tax_rates"] == [stripe_de]  # the same choice as before, applied again
    clock.at(dt.datetime(2026, 3, 1, tzinfo=UTC))
    await w.send(*w.fake.renew(sub["id"]))
    _, _, third = await w.invoices(pid)
    assert figures(third) == (2000, 0, 380, 2380)
    assert tax_lines(third) == [("VAT", decimal.Decimal(19), False, 380)]
