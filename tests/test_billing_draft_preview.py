"""previewBillingRuleDraft and previewBillingRuleChange: what saving would give, nothing written."""

from __future__ import annotations

from ledgerx.ids import decode
from ledgerx.services import Services
from tests.conftest import GQL
from tests.test_billing import PREVIEW, create_rule, setup
from tests.test_billing_helpers import owner_fetch

DRAFT = """query($i: CreateBillingRuleInput!, $n: Int!) { previewBillingRuleDraft(input: $i, count: $n) {
  at localAt timezone periodStart amount units } }"""
CHANGE = """query($i: UpdateBillingRuleInput!, $n: Int!) { previewBillingRuleChange(input: $i, count: $n) {
  at amount } }"""
RULE = "query($id: ID!) { billingRule(id: $id) { amount name } }"


async def counts(services: Services, pid: str) -> tuple[int, int]:
    project = decode("project", pid)
    rules = await owner_fetch(services, "SELECT count(*) AS n FROM billing_rules WHERE project_id = $1", project)
    audit = await owner_fetch(services, "SELECT count(*) AS n FROM audit_log WHERE project_id = $1", project)
    return int(rules[0]["n"]), int(audit[0]["n"])


async def test_a_draft_previews_what_creating_it_would_give_and_writes_nothing(gql: GQL, services: Services) -> None:
    owner, pid, wid = await setup(gql)
    fields = {
        "walletId": wid,
        "name": "Seats",
        "mode": "SELECTED_DAYS",
        "amount": 7,
        "weekdays": ["MONDAY", "THURSDAY"],
        "timezone": "Asia/Tokyo",
        "timeOfDay": "08:30",
    }
    before = await counts(services, pid)
    draft = (await gql.ok(DRAFT, {"i": fields, "n": 6}, token=owner.token))["previewBillingRuleDraft"]
    assert await counts(services, pid) == before
    rule = await create_rule(gql, owner, wid, **{k: v for k, v in fields.items() if k != "walletId"})
    saved = (await gql.ok(PREVIEW, {"id": rule["id"], "n": 6}, token=owner.token))["previewBillingRule"]
    assert [(d["at"], d["amount"], d["localAt"]) for d in draft] == [
        (s["at"], s["amount"], s["localAt"]) for s in saved
    ]

    bad = await gql.error(DRAFT, {"i": {**fields, "timeOfDay": "25:99"}, "n": 3}, token=owner.token)
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "timeOfDay"
    missing = await gql.error(
        DRAFT,
        {"i": {"walletId": wid, "name": "Metered", "mode": "USAGE_BASED", "metricKey": "nope"}, "n": 3},
        token=owner.token,
    )
    assert missing["code"] == "BAD_USER_INPUT" and missing["field"] == "metricKey"
    assert await counts(services, pid) == (before[0] + 1, before[1] + 1)  # only the real create


async def test_a_change_previews_before_it_is_saved(gql: GQL, services: Services) -> None:
    owner, pid, wid = await setup(gql)
    rule = await create_rule(gql, owner, wid, mode="DAILY_FLAT", amount=4, name="Daily")
    before = await counts(services, pid)
    changed = (await gql.ok(CHANGE, {"i": {"id": rule["id"], "amount": 9}, "n": 3}, token=owner.token))[
        "previewBillingRuleChange"
    ]
    assert [c["amount"] for c in changed] == ["9", "9", "9"]
    # Nothing saved: the rule and its own preview are as they were, no audit row.
    assert (await gql.ok(RULE, {"id": rule["id"]}, token=owner.token))["billingRule"]["amount"] == "4"
    saved = (await gql.ok(PREVIEW, {"id": rule["id"], "n": 3}, token=owner.token))["previewBillingRule"]
    assert [s["amount"] for s in saved] == ["4", "4", "4"]
    assert [s["at"] for s in saved] == [c["at"] for c in changed]
    assert await counts(services, pid) == before
    err = await gql.error(CHANGE, {"i": {"id": rule["id"], "amount": -1}, "n": 3}, token=owner.token)
    assert err["code"] == "BAD_USER_INPUT" and err["field"] == "amount"
