"""LedgerX's own invoices end to end (real PostgreSQL, Redis, the fake Stripe server, an SMTP
capture): the invoice a credit pack purchase issues, its PDF and who may read it (members, API keys,
the signed expiring link, nobody else), refunds and their credit notes, the "invoice issued" mail,
wallet statements, and the platform admin's listing and CSV export. PDFs are read back with pypdf."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from pypdf import PdfReader

from ledgerx import ids
from ledgerx.domain.invoicing import credit_notes
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, new_email, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver, deliver_and_process, stripe_settings
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql
from tests.test_invites import SmtpServer, fast_mail
from tests.test_notifications import mailed, parts, send_mail

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

UTC = dt.UTC
PUBLIC_URL = "https://app.ledgerx.test"  # fast_mail's public URL: every signed link starts with it
SELLER = "Ledger Seller Test Ltd"
NUMBER = re.compile(r"LX-(\d{4})-(\d{6})")
CN_NUMBER = re.compile(r"LX-CN-(\d{4})-(\d{6})")
NOT_FOUND = {"error": {"code": "NOT_FOUND", "message": "document not found"}}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe, smtp: SmtpServer, request: pytest.FixtureRequest) -> Settings:
    """Stripe, SMTP and a named seller; TAX_MODE from an indirect parameter (default none)."""
    mode = getattr(request, "param", "none")
    return fast_mail(
        stripe_settings(settings, fake, tax_mode=mode, seller_name=SELLER, seller_address=("1 Test Street",)),
        smtp.url,
    )


TAXED = pytest.mark.parametrize("settings", ["rates"], indirect=True)

# -- GraphQL ------------------------------------------------------------------------------------------------

UPDATE_DETAILS = "mutation($i: UpdateBillingDetailsInput!) { updateBillingDetails(input: $i) { email legalName } }"
CREDIT_NOTE_FIELDS = """
  id number invoiceId reason issuedAt pdfUrl
  subtotal { amount currency } tax { amount } total { amount currency }
  lines { description quantity unitAmount { amount } amount { amount } }
"""
INVOICE_FIELDS = f"""
  id kind status number issuedAt pdfUrl taxNote
  subtotal {{ amount }} discount {{ amount }} tax {{ amount }} total {{ amount currency }}
  amountPaid {{ amount }} amountDue {{ amount }} amountCredited {{ amount }}
  taxLines {{ name rate inclusive amount {{ amount }} }}
  lines {{ description kind quantity unitAmount {{ amount }} amount {{ amount }} tax {{ amount }} }}
  billingDetails {{ email legalName }}
  creditNotes {{ {CREDIT_NOTE_FIELDS} }}
"""
INVOICE = f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE_FIELDS} }} }}"
INVOICES = f"""
query($p: ID, $s: InvoiceStatus, $first: Int, $after: String) {{
  invoices(projectId: $p, status: $s, first: $first, after: $after) {{
    edges {{ node {{ {INVOICE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
  }}
}}
"""
REFUND = """
mutation($i: RefundInvoiceInput!) {
  refundInvoice(input: $i) { invoiceId stripeRefundId amount { amount currency } status }
}
"""
CREATE_TAX_RATE = "mutation($i: CreateTaxRateInput!) { createTaxRate(input: $i) { id percentage inclusive } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }"
REMOVE_MEMBER = "mutation($i: RemoveMemberInput!) { removeMember(input: $i) }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id } }"
STATEMENT = """
query($w: ID!, $from: DateTime!, $to: DateTime!, $first: Int, $after: String) {
  walletStatement(walletId: $w, from: $from, to: $to) {
    walletId from to openingBalance closingBalance credits debits pdfUrl
    entries(first: $first, after: $after) {
      edges { cursor node { at transactionId kind description amount balanceAfter } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""


# -- helpers --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Buyer:
    owner: SignedIn
    project_id: str
    email: str  # the project's billing email
    legal_name: str


async def new_buyer(
    gql: GQL, *, name: str = "Acme", legal_name: str | None = None, address: dict[str, str] | None = None
) -> Buyer:
    """A project whose billing details (email, legal name, address) are set before any purchase."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name=name)
    email = new_email("billing")
    legal = legal_name or f"{name} Holdings {secrets.token_hex(3).upper()} Ltd"
    details: dict[str, Any] = {"projectId": pid, "email": email, "legalName": legal}
    if address is not None:
        details["address"] = address
    done = await gql.ok(UPDATE_DETAILS, {"i": details}, token=owner.token)
    assert done["updateBillingDetails"] == {"email": email, "legalName": legal}
    return Buyer(owner, pid, email, legal)


async def purchase(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, buyer: Buyer, pack_id: str
) -> tuple[str, dict[str, Any]]:
    """A paid Checkout of the pack, its event delivered and processed: (session id, the event)."""
    session_id = await checkout(gql, buyer.owner, buyer.project_id, creditPackId=pack_id)
    (event,) = fake.complete_checkout(session_id)
    await deliver_and_process(client, services, event)
    return session_id, event


async def invoices_of(gql: GQL, buyer: Buyer) -> list[dict[str, Any]]:
    data = await gql.ok(INVOICES, {"p": buyer.project_id}, token=buyer.owner.token)
    return [e["node"] for e in data["invoices"]["edges"]]


async def invoice(gql: GQL, token: str, invoice_id: str) -> dict[str, Any]:
    return dict((await gql.ok(INVOICE, {"id": invoice_id}, token=token))["invoice"])


def stable(inv: dict[str, Any]) -> dict[str, Any]:
    """The invoice without its signed links (they expire counting from the moment of the read)."""
    notes = [{k: v for k, v in n.items() if k != "pdfUrl"} for n in inv["creditNotes"]]
    return {**{k: v for k, v in inv.items() if k != "pdfUrl"}, "creditNotes": notes}


def local(url: str) -> str:
    """A signed link (absolute, on the public URL) as a path and query for the test client."""
    assert url.startswith(PUBLIC_URL + "/"), url
    return url[len(PUBLIC_URL) :]


def with_query(path_and_query: str, **changes: str) -> str:
    """The same link with some query parameters replaced."""
    parts_ = urlsplit(path_and_query)
    query = dict(parse_qsl(parts_.query, keep_blank_values=True))
    query.update(changes)
    return f"{parts_.path}?{urlencode(query)}"


def pdf_text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(r.content)).pages)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refund_calls(fake: FakeStripe) -> int:
    return len(fake.calls_to("POST", "refunds"))


@pytest.fixture
async def admin(gql: GQL, settings: Settings) -> SignedIn:
    return await make_platform_admin(gql, settings)


@pytest.fixture
async def pack(gql: GQL, admin: SignedIn) -> str:
    """5000 credits for USD 49.00."""
    return await create_pack(gql, admin, credits=5000, amount=4900)


PACK_LINE = "5000 credits (5,000 credits)"  # the pack's name and its credits, as the invoice line says


# -- one purchase, one invoice, its PDF ------------------------------------------------------------------------


async def test_a_pack_purchase_issues_one_numbered_invoice_with_its_pdf(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, pack: str
) -> None:
    buyer = await new_buyer(gql, name="Initech")
    assert await invoices_of(gql, buyer) == []
    await purchase(gql, client, services, fake, buyer, pack)

    (listed,) = await invoices_of(gql, buyer)
    one = await invoice(gql, buyer.owner.token, listed["id"])
    assert stable(one) == stable(listed)
    assert listed["id"].startswith("ivc_")
    m = NUMBER.fullmatch(listed["number"])
    assert m, listed["number"]
    assert int(m.group(1)) == dt.datetime.fromisoformat(listed["issuedAt"]).astimezone(UTC).year
    assert (listed["kind"], listed["status"]) == ("CREDIT_PACK", "PAID")
    assert listed["total"] == {"amount": "4900", "currency": "USD"}
    assert [listed[k]["amount"] for k in ("subtotal", "discount", "tax", "amountPaid", "amountDue")] == [
        "4900",
        "0",
        "0",
        "4900",
        "4900",
    ]
    assert listed["amountCredited"] == {"amount": "0"}
    assert listed["taxLines"] == []
    assert listed["lines"] == [
        {
            "description": PACK_LINE,
            "kind": "ITEM",
            "quantity": 1,
            "unitAmount": {"amount": "4900"},
            "amount": {"amount": "4900"},
            "tax": {"amount": "0"},
        }
    ]
    # The buyer as they were at issue.
    assert listed["billingDetails"] == {"email": buyer.email, "legalName": buyer.legal_name}
    assert listed["creditNotes"] == []
    assert listed["pdfUrl"].startswith(f"{PUBLIC_URL}/invoices/{listed['id']}.pdf?expires=")

    # The PDF, as a member of the project reads it with their token.
    member = await add_member(gql, buyer.owner, buyer.project_id, "MEMBER")
    r = await client.get(f"/invoices/{listed['id']}.pdf", headers=bearer(member.token))
    shown = pdf_text(r)
    assert r.headers["content-disposition"] == f'inline; filename="{listed["number"]}.pdf"'
    assert r.headers["cache-control"] == "private, no-store"
    for expected in (listed["number"], SELLER, "1 Test Street", buyer.legal_name, buyer.email, PACK_LINE):
        assert expected in shown, (expected, shown)
    assert "Invoice" in shown
    assert "Tax total USD 0.00" in shown, shown
    assert "Total USD 49.00" in shown, shown

    # A second purchase: a second invoice, the next number, listed first.
    await purchase(gql, client, services, fake, buyer, pack)
    second, first = await invoices_of(gql, buyer)
    assert stable(first) == stable(one)
    year, seq = NUMBER.fullmatch(second["number"]).groups()  # type: ignore[union-attr]
    assert (year, int(seq)) == (m.group(1), int(m.group(2)) + 1)


async def test_who_may_read_an_invoice_pdf(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, pack: str
) -> None:
    mine = await new_buyer(gql, name="Mine")
    theirs = await new_buyer(gql, name="Theirs")
    await purchase(gql, client, services, fake, mine, pack)
    await purchase(gql, client, services, fake, theirs, pack)
    (inv,) = await invoices_of(gql, mine)
    (other,) = await invoices_of(gql, theirs)
    path = f"/invoices/{inv['id']}.pdf"
    signed = local(inv["pdfUrl"])
    assert signed.startswith(path + "?")

    async def status(url: str, headers: dict[str, str] | None = None) -> int:
        r = await client.get(url, headers=headers or {})
        if r.status_code == 404:
            # The same answer whether the document exists or not: ids cannot be probed.
            assert r.json() == NOT_FOUND
        else:
            assert inv["number"] in pdf_text(r)
        return r.status_code

    assert await status(path, bearer(mine.owner.token)) == 200
    assert await status(path, bearer(theirs.owner.token)) == 404  # another tenant's member
    assert await status(path) == 404  # no credentials
    assert await status(path, bearer("not-a-token")) == 404
    assert await status(signed) == 200  # the signed link, without credentials
    assert await status(signed, bearer(theirs.owner.token)) == 200  # the link alone suffices

    # An API key of the project without `billing:read` is refused (as the billing details are).
    usage_only = (
        await gql.ok(
            CREATE_KEY,
            {"i": {"projectId": mine.project_id, "name": "meter", "scopes": ["usage:write"]}},
            token=mine.owner.token,
        )
    )["createApiKey"]["secret"]
    assert await status(path, bearer(usage_only)) == 404
    # One with it (either header), until it is revoked.
    made = (
        await gql.ok(
            CREATE_KEY,
            {"i": {"projectId": mine.project_id, "name": "books", "scopes": ["billing:read"]}},
            token=mine.owner.token,
        )
    )["createApiKey"]
    key = made["secret"]
    assert await status(path, bearer(key)) == 200
    assert await status(path, {"X-Api-Key": key}) == 200
    assert await status(f"/invoices/{other['id']}.pdf", bearer(key)) == 404
    await gql.ok(REVOKE_KEY, {"id": made["apiKey"]["id"]}, token=mine.owner.token)
    assert await status(path, bearer(key)) == 404

    # A member reads it until they leave the project.
    member = await add_member(gql, mine.owner, mine.project_id, "VIEWER")
    assert await status(path, bearer(member.token)) == 200
    i = {"projectId": mine.project_id, "userId": member.user_id}
    assert (await gql.ok(REMOVE_MEMBER, {"i": i}, token=mine.owner.token))["removeMember"] is True
    assert await status(path, bearer(member.token)) == 404

    # A tampered signature, the signature on another id, an expired link: nothing.
    q = dict(parse_qsl(urlsplit(signed).query))
    sig = q["signature"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert await status(with_query(signed, signature=flipped)) == 404
    assert await status(with_query(signed, signature="")) == 404
    assert await status(with_query(signed, signature="é")) == 404  # not ASCII: still a plain 404
    assert await status(with_query(signed, expires=str(int(q["expires"]) + 1))) == 404
    assert await status(f"/invoices/{other['id']}.pdf?{urlsplit(signed).query}") == 404
    assert (
        await status(
            f"/credit-notes/{ids.encode('credit_note', ids.decode('invoice', inv['id']))}.pdf?{urlsplit(signed).query}"
        )
        == 404
    )
    links = services.payments.documents
    assert links is not None
    expired = links.sign(path, dt.datetime(2020, 1, 1, tzinfo=UTC))
    assert await status(local(expired)) == 404
    fresh = links.sign(path, services.payments.now())  # the same signer now: the link works
    assert await status(local(fresh)) == 200

    # Ids that are not invoices' (malformed, another kind, unknown) are 404 for everyone.
    unknown = ids.encode("invoice", uuid7())
    for bad in ("nonsense", "ivc_", other["id"].upper(), mine.project_id, unknown):
        assert await status(f"/invoices/{bad}.pdf", bearer(mine.owner.token)) == 404, bad
    assert await status(local(links.sign(f"/invoices/{unknown}.pdf", services.payments.now()))) == 404

    # GraphQL: another tenant cannot read the invoice either; a malformed id is bad input.
    err = await gql.error(INVOICE, {"id": inv["id"]}, token=theirs.owner.token)
    assert err["code"] == "NOT_FOUND"
    err = await gql.error(INVOICE, {"id": "nonsense"}, token=mine.owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "id")


# -- refunds and credit notes -----------------------------------------------------------------------------------


async def taxed_buyer(gql: GQL, admin: SignedIn) -> Buyer:
    """A buyer taxed at 20 % (exclusive): a rate of a state of its own, so no other test's rate
    of the same country applies or collides (one live rate per place)."""
    state = f"T{secrets.token_hex(4).upper()}"
    made = await gql.ok(
        CREATE_TAX_RATE,
        {"i": {"name": "VAT", "percentage": "20", "inclusive": False, "country": "US", "state": state}},
        token=admin.token,
    )
    assert made["createTaxRate"]["percentage"] == "20"
    return await new_buyer(gql, name="Taxed", address={"country": "US", "state": state, "city": "Springfield"})


async def refund(gql: GQL, admin: SignedIn, invoice_id: str, amount: int | None, reason: str | None) -> dict[str, Any]:
    i: dict[str, Any] = {"invoiceId": invoice_id}
    if amount is not None:
        i["amount"] = str(amount)
    if reason is not None:
        i["reason"] = reason
    return dict((await gql.ok(REFUND, {"i": i}, token=admin.token))["refundInvoice"])


@TAXED
async def test_refunds_issue_credit_notes_until_the_invoice_and_its_tax_are_credited(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, admin: SignedIn, pack: str
) -> None:
    buyer = await taxed_buyer(gql, admin)
    session_id, _ = await purchase(gql, client, services, fake, buyer, pack)
    (inv,) = await invoices_of(gql, buyer)
    # 4900 + 20 % = 980 of tax: the buyer paid 5880.
    assert [inv[k]["amount"] for k in ("subtotal", "tax", "amountPaid", "amountDue")] == ["4900", "980", "5880", "5880"]
    assert inv["total"] == {"amount": "5880", "currency": "USD"}
    assert inv["taxLines"] == [{"name": "VAT", "rate": "20", "inclusive": False, "amount": {"amount": "980"}}]
    assert inv["lines"][0]["tax"] == {"amount": "980"}
    shown = pdf_text(await client.get(local(inv["pdfUrl"])))
    for expected in (
        inv["number"],
        buyer.legal_name,
        "VAT 20 % (exclusive) USD 9.80",
        "Tax total USD 9.80",
        "Total USD 58.80",
    ):
        assert expected in shown, (expected, shown)

    # Only platform admins refund; more than is left is refused before Stripe is asked.
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": "1000"}}, token=buyer.owner.token)
    assert err["code"] == "FORBIDDEN"
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": "5881"}}, token=admin.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "amount")
    assert refund_calls(fake) == 0

    # A partial refund: Stripe is asked, and the credit note follows Stripe's charge.refunded.
    done = await refund(gql, admin, inv["id"], 1000, "Partial goodwill")
    assert done["invoiceId"] == inv["id"]
    assert done["amount"] == {"amount": "1000", "currency": "USD"}
    assert done["status"] == "succeeded"
    (call,) = fake.calls_to("POST", "refunds")
    assert call.idempotency_key is not None
    assert call.params["amount"] == "1000"
    assert call.params["metadata"] == {"ledgerx_invoice_id": inv["id"], "ledgerx_reason": "Partial goodwill"}
    assert fake.get(done["stripeRefundId"])["amount"] == 1000
    assert (await invoice(gql, admin.token, inv["id"]))["creditNotes"] == []  # not before Stripe says so
    # A second click before Stripe's event arrives: the same refund, not a second one.
    assert await refund(gql, admin, inv["id"], 1000, "Partial goodwill") == done
    assert [r["amount"] for r in fake.of_type("refund")] == [1000]
    refunded = fake.last_event("charge.refunded")
    await deliver_and_process(client, services, refunded)

    after = await invoice(gql, buyer.owner.token, inv["id"])
    (note,) = after["creditNotes"]
    m = CN_NUMBER.fullmatch(note["number"])
    assert m, note["number"]
    assert m.group(1) == NUMBER.fullmatch(inv["number"]).group(1)  # type: ignore[union-attr]
    # Its share of the tax: 1000 * 980 / 5880 = 166.67 -> 167.
    assert (note["invoiceId"], note["reason"]) == (inv["id"], "Partial goodwill")
    assert note["total"] == {"amount": "1000", "currency": "USD"}
    assert (note["subtotal"]["amount"], note["tax"]["amount"]) == ("833", "167")
    assert note["lines"] == [
        {
            "description": f"Refund of invoice {inv['number']}",
            "quantity": 1,
            "unitAmount": {"amount": "833"},
            "amount": {"amount": "833"},
        }
    ]
    assert (after["amountCredited"]["amount"], after["amountDue"]["amount"]) == ("1000", "4880")

    # The credit note's PDF: through its signed link, and for the project's members.
    shown = pdf_text(await client.get(local(note["pdfUrl"])))
    for expected in ("Credit note", note["number"], f"Credits invoice {inv['number']}.", "Reason: Partial goodwill"):
        assert expected in shown, (expected, shown)
    assert "Total USD 10.00" in shown, shown
    assert "USD 1.67" in shown, shown
    note_path = f"/credit-notes/{note['id']}.pdf"
    assert note["pdfUrl"].startswith(f"{PUBLIC_URL}{note_path}?expires=")
    assert note["number"] in pdf_text(await client.get(note_path, headers=bearer(buyer.owner.token)))
    assert (await client.get(note_path)).status_code == 404
    stranger = await new_buyer(gql, name="Stranger")
    r = await client.get(note_path, headers=bearer(stranger.owner.token))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    # The invoice's PDF now names its credit note.
    shown = pdf_text(await client.get(local(after["pdfUrl"])))
    assert f"Credit note {note['number']} of" in shown, shown

    # The same refund again (a redelivery, and a later snapshot of the charge): no second note.
    r = await deliver(client, refunded)
    assert r.json() == {"received": True, "duplicate": True}
    again = fake.event("charge.refunded", fake.charge_of_session(session_id))
    await deliver_and_process(client, services, again)
    assert len((await invoice(gql, admin.token, inv["id"]))["creditNotes"]) == 1

    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": "4881"}}, token=admin.token)
    assert (err["code"], err["field"], err["left"]) == ("BAD_USER_INPUT", "amount", "4880")
    assert refund_calls(fake) == 2

    # The rest: the second note takes the tax that is left, so the whole tax is credited.
    done = await refund(gql, admin, inv["id"], None, None)
    assert done["amount"]["amount"] == "4880"
    await deliver_and_process(client, services, fake.last_event("charge.refunded"))
    full = await invoice(gql, admin.token, inv["id"])
    first, second = full["creditNotes"]
    assert {**first, "pdfUrl": None} == {**note, "pdfUrl": None}  # the first note is unchanged
    assert CN_NUMBER.fullmatch(second["number"]).group(2) == f"{int(m.group(2)) + 1:06d}"  # type: ignore[union-attr]
    assert second["total"]["amount"] == "4880"
    assert (second["subtotal"]["amount"], second["tax"]["amount"]) == ("4067", "813")
    assert second["reason"] == "Refund"
    assert int(first["tax"]["amount"]) + int(second["tax"]["amount"]) == int(full["tax"]["amount"]) == 980
    assert (full["amountCredited"]["amount"], full["amountDue"]["amount"]) == ("5880", "0")
    assert full["status"] == "PAID"

    # Nothing is left: refused, Stripe not asked.
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"]}}, token=admin.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "amount")
    assert refund_calls(fake) == 3
    assert sorted(r["amount"] for r in fake.of_type("refund")) == [1000, 4880]


async def test_refund_errors_and_a_dashboard_refund(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    admin: SignedIn,
    pack: str,
) -> None:
    buyer = await new_buyer(gql, name="Dash")
    session_id, _ = await purchase(gql, client, services, fake, buyer, pack)
    (inv,) = await invoices_of(gql, buyer)

    unknown = ids.encode("invoice", uuid7())
    err = await gql.error(REFUND, {"i": {"invoiceId": unknown, "amount": "100"}}, token=admin.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "invoiceId")
    err = await gql.error(REFUND, {"i": {"invoiceId": "nonsense", "amount": "100"}}, token=admin.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "invoiceId")
    for amount, field in (("0", "amount"), ("-5", "amount")):
        err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": amount}}, token=admin.token)
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", field), amount
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "reason": "two\nlines"}}, token=admin.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "reason")

    # An unpaid (open, unnumbered) invoice cannot be refunded.
    open_id = uuid7()
    await owner_sql(
        settings,
        "INSERT INTO invoices (id, project_id, kind, status, currency, total, amount_due, amount_paid, attempt_count,"
        " credits, subtotal, discount, tax, tax_lines, amount_credited)"
        " VALUES ($1, $2, 'OTHER', 'OPEN', 'USD', 700, 700, 0, 0, 0, 700, 0, 0, '[]'::jsonb, 0)",
        open_id,
        ids.decode("project", buyer.project_id),
    )
    err = await gql.error(REFUND, {"i": {"invoiceId": ids.encode("invoice", open_id)}}, token=admin.token)
    assert (err["code"], err["field"]) == ("CONFLICT", "invoiceId")
    # ... nor printed: it has no number and no link.
    unpaid = await invoice(gql, buyer.owner.token, ids.encode("invoice", open_id))
    assert (unpaid["status"], unpaid["number"], unpaid["issuedAt"], unpaid["pdfUrl"]) == ("OPEN", None, None, None)
    r = await client.get(f"/invoices/{ids.encode('invoice', open_id)}.pdf", headers=bearer(buyer.owner.token))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    assert refund_calls(fake) == 0

    # A refund made in Stripe's dashboard issues its credit note too.
    charge = fake.charge_of_session(session_id)["id"]
    await deliver_and_process(client, services, fake.refund(charge, 900))
    got = await invoice(gql, buyer.owner.token, inv["id"])
    (note,) = got["creditNotes"]
    assert CN_NUMBER.fullmatch(note["number"]), note["number"]
    assert (note["total"]["amount"], note["tax"]["amount"], note["subtotal"]["amount"]) == ("900", "0", "900")
    assert note["reason"] == "Refund"
    assert (got["amountCredited"]["amount"], got["amountDue"]["amount"]) == ("900", "4000")
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": "4001"}}, token=admin.token)
    assert (err["code"], err["field"], err["left"]) == ("BAD_USER_INPUT", "amount", "4000")
    assert refund_calls(fake) == 0

    # A dashboard refund LedgerX has not heard of yet: Stripe refuses what it no longer holds.
    later = fake.refund(charge, 3000)
    err = await gql.error(REFUND, {"i": {"invoiceId": inv["id"], "amount": "1500"}}, token=admin.token)
    assert (err["code"], err["retryable"], err["providerStatus"]) == ("PAYMENT_PROVIDER_ERROR", False, 400)
    assert len((await invoice(gql, admin.token, inv["id"]))["creditNotes"]) == 1
    await deliver_and_process(client, services, later)
    got = await invoice(gql, buyer.owner.token, inv["id"])
    assert [n["total"]["amount"] for n in got["creditNotes"]] == ["900", "3000"]
    assert (got["amountCredited"]["amount"], got["amountDue"]["amount"]) == ("3900", "1000")


# -- the "invoice issued" mail ----------------------------------------------------------------------------------

WEBHOOK_EVENTS = """
query($t: String) { webhookEvents(type: $t, first: 100) { edges { node { id stripeEventId } } } }
"""
REPLAY = "mutation($id: ID!) { replayWebhookEvent(id: $id) { status } }"


async def test_the_invoice_issued_mail_goes_once_to_the_billing_email_with_a_working_link(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    smtp: SmtpServer,
    admin: SignedIn,
    pack: str,
) -> None:
    buyer = await new_buyer(gql, name="Mailco")
    _, event = await purchase(gql, client, services, fake, buyer, pack)
    (inv,) = await invoices_of(gql, buyer)
    await send_mail(services)
    (msg,) = mailed(smtp, buyer.email)
    assert msg["Subject"] == f"Mailco: invoice {inv['number']} for USD 49.00"
    assert mailed(smtp, buyer.owner.email) == []  # billing mail goes to the billing email alone
    text, page = parts(msg)
    found = re.search(r"https://app\.ledgerx\.test/invoices/\S+", text)
    assert found, text
    link = found.group(0)
    assert link.startswith(f"{PUBLIC_URL}/invoices/{inv['id']}.pdf?expires=")
    assert link.replace("&", "&amp;") in page
    # The link works without credentials, and shows this invoice.
    shown = pdf_text(await client.get(local(link)))
    assert inv["number"] in shown and buyer.legal_name in shown

    # The Stripe event again: redelivered, replayed by an admin, handled again. No second mail.
    assert (await deliver(client, event)).json() == {"received": True, "duplicate": True}
    events = await gql.ok(WEBHOOK_EVENTS, {"t": "checkout.session.completed"}, token=admin.token)
    (node,) = [e["node"] for e in events["webhookEvents"]["edges"] if e["node"]["stripeEventId"] == event["id"]]
    assert (await gql.ok(REPLAY, {"id": node["id"]}, token=admin.token))["replayWebhookEvent"]["status"] == "PROCESSED"
    await deliver_and_process(client, services, fake.event("checkout.session.completed", event["data"]["object"]))
    await send_mail(services)
    assert len(mailed(smtp, buyer.email)) == 1
    assert len(await invoices_of(gql, buyer)) == 1
    rows = await owner_sql(
        settings,
        "SELECT occurrence_key, subject FROM mail_outbox WHERE project_id = $1 AND kind = 'invoice_issued'",
        ids.decode("project", buyer.project_id),
    )
    assert [(r["occurrence_key"], r["subject"]) for r in rows] == [
        (f"invoice_issued:invoice:{ids.decode('invoice', inv['id'])}", msg["Subject"])
    ]


# -- wallet statements ----------------------------------------------------------------------------------------


async def statement(gql: GQL, token: str, wallet_id: str, start: str, end: str, **page: Any) -> dict[str, Any]:
    data = await gql.ok(STATEMENT, {"w": wallet_id, "from": start, "to": end, **page}, token=token)
    return dict(data["walletStatement"])


async def test_a_wallet_statement_adds_up_pages_its_entries_and_prints(
    gql: GQL, client: httpx.AsyncClient, services: Services
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name="Statements")
    wallet = (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "Ops wallet"}}, token=owner.token))[
        "createWallet"
    ]["id"]
    other_wallet = (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "Other"}}, token=owner.token))[
        "createWallet"
    ]["id"]
    moves = [(CREDIT, 1000), (DEBIT, 300), (CREDIT, 500), (DEBIT, 200), (CREDIT, 50), (DEBIT, 25)]
    for n, (doc, amount) in enumerate(moves):
        i = {"walletId": wallet, "amount": str(amount), "idempotencyKey": f"s-{n}", "reason": f"move {n}"}
        await gql.ok(doc, {"i": i}, token=owner.token)

    # Everything: from nothing to the wallet's balance.
    now = services.payments.now()
    wide = await statement(
        gql, owner.token, wallet, (now - dt.timedelta(days=1)).isoformat(), (now + dt.timedelta(days=1)).isoformat()
    )
    assert [wide[k] for k in ("openingBalance", "credits", "debits", "closingBalance")] == ["0", "1550", "525", "1025"]
    entries = [e["node"] for e in wide["entries"]["edges"]]
    assert [(e["amount"], e["balanceAfter"]) for e in entries] == [
        ("1000", "1000"),
        ("-300", "700"),
        ("500", "1200"),
        ("-200", "1000"),
        ("50", "1050"),
        ("-25", "1025"),
    ]
    assert [e["description"] for e in entries] == [
        f"{e['kind'].replace('_', ' ').capitalize()}: move {n}" for n, e in enumerate(entries)
    ]
    at = [dt.datetime.fromisoformat(e["at"]) for e in entries]
    assert at == sorted(at) and len(set(at)) == len(at)

    # [the 2nd entry, the 6th): the 1st is before it, the 6th after it.
    start, end = at[1], at[5]
    # from given in another time zone: the same instant.
    st = await statement(
        gql,
        owner.token,
        wallet,
        start.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
        end.isoformat(),
        first=2,
    )
    assert st["walletId"] == wallet
    assert dt.datetime.fromisoformat(st["from"]) == start and dt.datetime.fromisoformat(st["to"]) == end
    assert [st[k] for k in ("openingBalance", "credits", "debits", "closingBalance")] == ["1000", "550", "500", "1050"]
    assert int(st["openingBalance"]) + int(st["credits"]) - int(st["debits"]) == int(st["closingBalance"])

    # Paging two at a time: every entry of the period once, in order.
    seen: list[dict[str, Any]] = []
    page = st["entries"]
    pages = 1
    while True:
        assert len(page["edges"]) <= 2
        seen += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        pages += 1
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
        page = (await statement(gql, owner.token, wallet, start.isoformat(), end.isoformat(), first=2, after=after))[
            "entries"
        ]
    assert pages == 2
    assert seen == entries[1:5]

    # The PDF through the signed link (the period is part of what is signed).
    link = local(st["pdfUrl"])
    assert link.startswith(f"/wallets/{wallet}/statement.pdf?")
    shown = pdf_text(await client.get(link))
    for expected in (
        "Ops wallet",
        wallet,
        "Statements",  # the project (no billing details)
        SELLER,
        "Opening balance 1,000 credits",
        "Credits +550 credits",
        "Debits -500 credits",
        "Closing balance 1,050 credits",
        "move 1",
        "move 4",
    ):
        assert expected in shown, (expected, shown)
    assert "move 0" not in shown and "move 5" not in shown
    assert (await client.get(link, headers=bearer(owner.token))).status_code == 200

    # Another period with the same signature, or another wallet: nothing without credentials.
    other_start = (start - dt.timedelta(seconds=1)).isoformat()
    for tampered in (
        with_query(link, **{"from": other_start}),
        with_query(link, to=(end + dt.timedelta(seconds=1)).isoformat()),
        link.replace(wallet, other_wallet),
        link.replace(wallet, ids.encode("wallet", uuid7())),
    ):
        r = await client.get(tampered)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), tampered
    # A member reads any period with their token; another tenant does not, even with a period.
    plain = f"/wallets/{wallet}/statement.pdf?" + urlencode({"from": start.isoformat(), "to": end.isoformat()})
    assert "Closing balance 1,050 credits" in pdf_text(await client.get(plain, headers=bearer(owner.token)))
    stranger = await sign_up(gql)
    await create_project(gql, stranger)
    r = await client.get(plain, headers=bearer(stranger.token))
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    r = await client.get(f"/wallets/{wallet}/statement.pdf", headers=bearer(owner.token))
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("BAD_USER_INPUT", "from")

    # Bad input through GraphQL.
    s, e = start.isoformat(), end.isoformat()
    for bad_from, bad_to, field in (
        (e, s, "to"),
        (s, s, "to"),
        (s, (start + dt.timedelta(days=3661)).isoformat(), "to"),
    ):
        err = await gql.error(STATEMENT, {"w": wallet, "from": bad_from, "to": bad_to}, token=owner.token)
        assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), (bad_from, bad_to)
    naive = start.replace(tzinfo=None).isoformat()
    err = await gql.error(STATEMENT, {"w": wallet, "from": naive, "to": e}, token=owner.token)
    assert (err["code"], err["field"], err["message"]) == ("BAD_USER_INPUT", "from", "from and to need a time zone")
    err = await gql.error(STATEMENT, {"w": wallet, "from": s, "to": e}, token=stranger.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "walletId")
    err = await gql.error(STATEMENT, {"w": wallet, "from": s, "to": e})
    assert err["code"] == "UNAUTHENTICATED"


# -- platform admins: every project's invoices, the CSV ---------------------------------------------------------


async def test_platform_admins_list_every_projects_invoices_and_export_the_csv(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    admin: SignedIn,
    pack: str,
) -> None:
    alpha = await new_buyer(gql, name="Alpha", address={"country": "DE", "city": "Berlin"})
    vat = {"projectId": alpha.project_id, "taxIds": [{"type": "eu_vat", "value": "DE811907980"}]}
    await gql.ok(UPDATE_DETAILS, {"i": vat}, token=alpha.owner.token)
    # A legal name a spreadsheet would run as a formula: the CSV quotes it.
    beta = await new_buyer(gql, name="Beta", legal_name='=HYPERLINK("http://x.test") Beta')
    session_a, _ = await purchase(gql, client, services, fake, alpha, pack)
    await purchase(gql, client, services, fake, beta, pack)
    (ia,) = await invoices_of(gql, alpha)
    (ib,) = await invoices_of(gql, beta)
    open_id = ids.encode("invoice", uuid7())  # an unpaid invoice, the newest of all
    await owner_sql(
        settings,
        "INSERT INTO invoices (id, project_id, kind, status, currency, total, amount_due, amount_paid, attempt_count,"
        " credits, subtotal, discount, tax, tax_lines, amount_credited)"
        " VALUES ($1, $2, 'OTHER', 'OPEN', 'USD', 700, 700, 0, 0, 0, 700, 0, 0, '[]'::jsonb, 0)",
        ids.decode("invoice", open_id),
        ids.decode("project", beta.project_id),
    )

    async def listed(status: str | None, first: int, after: str | None = None) -> tuple[list[str], str | None]:
        data = await gql.ok(INVOICES, {"s": status, "first": first, "after": after}, token=admin.token)
        conn = data["invoices"]
        return [e["node"]["id"] for e in conn["edges"]], conn["pageInfo"]["endCursor"]

    assert (await listed(None, 3))[0] == [open_id, ib["id"], ia["id"]]
    assert (await listed("PAID", 2))[0] == [ib["id"], ia["id"]]
    assert (await listed("OPEN", 1))[0] == [open_id]
    first_page, cursor = await listed("PAID", 1)
    assert first_page == [ib["id"]]
    assert (await listed("PAID", 1, cursor))[0] == [ia["id"]]
    data = await gql.ok(INVOICES, {"first": 3}, token=admin.token)
    assert stable(data["invoices"]["edges"][2]["node"]) == stable(ia)
    err = await gql.error(INVOICES, {}, token=alpha.owner.token)
    assert err["code"] == "FORBIDDEN"
    # A project's own listing filters by status too.
    for wanted, expected in (("OPEN", [open_id]), ("PAID", [ib["id"]]), (None, [open_id, ib["id"]])):
        data = await gql.ok(INVOICES, {"p": beta.project_id, "s": wanted}, token=beta.owner.token)
        assert [e["node"]["id"] for e in data["invoices"]["edges"]] == expected, wanted
    err = await gql.error(INVOICES, {"p": beta.project_id}, token=alpha.owner.token)
    assert err["code"] == "NOT_FOUND"

    # A dashboard refund of alpha's purchase: a credit note in the same period.
    await deliver_and_process(client, services, fake.refund(fake.charge_of_session(session_a)["id"], 900))
    (note,) = (await invoice(gql, admin.token, ia["id"]))["creditNotes"]

    start = dt.datetime.fromisoformat(ia["issuedAt"])
    end = dt.datetime.fromisoformat(note["issuedAt"]) + dt.timedelta(microseconds=1)
    period = {"from": start.isoformat(), "to": end.isoformat()}
    r = await client.get("/admin/invoices.csv", params=period, headers=bearer(admin.token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="invoices-{start.date().isoformat()}-{end.date().isoformat()}.csv"'
    )
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "document",
        "number",
        "issued_at",
        "project_id",
        "buyer",
        "buyer_country",
        "buyer_tax_ids",
        "currency",
        "subtotal",
        "discount",
        "tax",
        "total",
        "tax_note",
        "invoice_number",
        "invoice_id",
    ]
    paid = ("4900", "0", "0", "4900", "")  # subtotal, discount, tax, total, tax note
    refunded = ("-900", "0", "0", "-900", "Refund")  # credit notes count negative; the note is the reason
    a, b = (alpha.project_id, alpha.legal_name, "DE"), (beta.project_id, "'" + beta.legal_name, "")
    of_a = (ia["number"], ia["id"])  # the invoice a credit note credits
    assert rows[1:] == [
        ["INVOICE", ia["number"], ia["issuedAt"], *a, "eu_vat:DE811907980", "USD", *paid, ia["number"], ia["id"]],
        ["INVOICE", ib["number"], ib["issuedAt"], *b, "", "USD", *paid, ib["number"], ib["id"]],
        ["CREDIT_NOTE", note["number"], note["issuedAt"], *a, "eu_vat:DE811907980", "USD", *refunded, *of_a],
    ]
    # The period is [from, to): starting after alpha's invoice leaves it out.
    later = {"from": (start + dt.timedelta(microseconds=1)).isoformat(), "to": end.isoformat()}
    r = await client.get("/admin/invoices.csv", params=later, headers=bearer(admin.token))
    assert [row[1] for row in csv.reader(io.StringIO(r.text))][1:] == [ib["number"], note["number"]]

    async def refused(params: dict[str, str], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        r = await client.get("/admin/invoices.csv", params=params, headers=headers)
        assert r.headers["content-type"] == "application/json"
        return r.status_code, r.json()["error"]

    status, body = await refused(period, bearer(alpha.owner.token))
    assert (status, body) == (403, {"code": "FORBIDDEN", "message": "platform admins only"})
    status, body = await refused(period, {})
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")
    status, body = await refused({"to": end.isoformat()}, bearer(admin.token))
    assert (status, body["code"], body["field"]) == (400, "BAD_USER_INPUT", "from")
    status, body = await refused({"from": start.isoformat()}, bearer(admin.token))
    assert (status, body["code"], body["field"]) == (400, "BAD_USER_INPUT", "to")
    year_and_more = {"from": start.isoformat(), "to": (start + dt.timedelta(days=370, seconds=1)).isoformat()}
    status, body = await refused(year_and_more, bearer(admin.token))
    assert (status, body["code"], body["field"]) == (400, "BAD_USER_INPUT", "to")
    status, body = await refused({"from": end.isoformat(), "to": start.isoformat()}, bearer(admin.token))
    assert (status, body["code"], body["field"]) == (400, "BAD_USER_INPUT", "to")
    status, body = await refused({"from": "2026-01-01T00:00:00", "to": end.isoformat()}, bearer(admin.token))
    assert (status, body["code"], body["field"]) == (400, "BAD_USER_INPUT", "from")
    # Exactly 370 days is allowed.
    r = await client.get(
        "/admin/invoices.csv",
        params={"from": start.isoformat(), "to": (start + dt.timedelta(days=370)).isoformat()},
        headers=bearer(admin.token),
    )
    assert r.status_code == 200


async def test_a_statement_adds_up_when_entry_times_do_not_follow_the_ledger_order(
    gql: GQL, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    wallet = (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "w"}}, token=owner.token))["createWallet"][
        "id"
    ]
    t = services.payments.now()
    # Two instances 10 s apart (or one batch that read the clock, then lost the race for the lock):
    # the later entry in the ledger's order carries the earlier time.
    for n, (at, amount) in enumerate(((t + dt.timedelta(seconds=10), 100), (t, 50))):
        monkeypatch.setattr(services.ledger, "clock", lambda at=at: at)
        i = {"walletId": wallet, "amount": str(amount), "idempotencyKey": f"skew-{n}"}
        await gql.ok(CREDIT, {"i": i}, token=owner.token)
    monkeypatch.undo()
    st = await statement(
        gql, owner.token, wallet, (t + dt.timedelta(seconds=5)).isoformat(), (t + dt.timedelta(days=1)).isoformat()
    )
    opening, credits, debits, closing = (int(st[k]) for k in ("openingBalance", "credits", "debits", "closingBalance"))
    # Today: opening 150 (the balance after the last entry, by seq, of those stamped before `from`),
    # credits 100, closing 150.
    assert opening + credits - debits == closing


@pytest.mark.parametrize(
    ("amount", "left", "tax_left", "expected"),
    [
        (1000, 5880, 980, 167),  # a share, half-even: 1000 * 980 / 5880 = 166.67
        (4880, 4880, 813, 813),  # the last refund takes the tax left
        (2, 2, 20, 2),  # many small refunds credited 0 tax each: the last is capped by its amount
        (0, 10, 5, 0),
    ],
)
def test_a_credit_notes_tax_share_never_exceeds_its_amount(
    amount: int, left: int, tax_left: int, expected: int
) -> None:
    got = credit_notes.tax_share(amount, left=left, invoice_total=5880, invoice_tax=980, tax_left=tax_left)
    assert got == expected
    assert 0 <= got <= amount
