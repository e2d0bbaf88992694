"""Document routes: PDFs of invoices, credit notes and wallet statements, and the accountant's CSV.

- `GET /invoices/{id}.pdf`, `GET /credit-notes/{id}.pdf`, `GET /wallets/{id}/statement.pdf?from=&to=`:
  for the project's members and its API keys with `billing:read` (statements: `wallets:read`)
  (`Authorization: Bearer …`), or for anyone holding the signed, expiring link the API hands out
  (`pdfUrl`). Everything else is 404, whether the
  document exists or not, so ids cannot be probed.
- `GET /admin/invoices.csv?from=&to=`: platform admins; issued invoices and credit notes of the
  period (at most about a year per file).

Every request spends one token of the caller's gateway bucket first (as /graphql and /v1/usage),
so rendering PDFs cannot be used to flood the server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ledgerx import ids
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, BadInput, Forbidden, NotFound, Unauthenticated
from ledgerx.domain.invoicing import issuing, printing, reads, statements
from ledgerx.domain.ledger import policy as ledger_policy
from ledgerx.domain.tenancy.access import Need, is_platform_admin
from ledgerx.domain.tenancy.authorize import Authorizer, Rule
from ledgerx.domain.tenancy.scopes import BILLING_READ
from ledgerx.http import edge
from ledgerx.schema.scalars import parse_datetime
from ledgerx.services import Services

# Invoices and credit notes print the billing details: members, and API keys with `billing:read`
# (as the billing details themselves); statements are the wallet's: the ledger's read rule.
DOCUMENT_READ = Rule(Need.MEMBER, write=False, scope=BILLING_READ)
_NOT_FOUND = NotFound("document not found")


def _instant(value: str | None, field: str) -> dt.datetime:
    """A query parameter read as the API's DateTime (schema/scalars.py), with a time zone; a `+`
    left unescaped in the URL arrives as a space."""
    if not value:
        raise BadInput(f"{field} is required (an ISO 8601 instant with a time zone)", field=field)
    try:
        t = parse_datetime(value.replace(" ", "+"))
    except BadInput as exc:
        raise BadInput(exc.message, field=field) from None
    if t.tzinfo is None:
        raise BadInput(f"{field} needs a time zone", field=field)
    return t


def _pdf(data: bytes, filename: str) -> Response:
    return Response(
        data,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


class _Caller:
    """Who asks: a valid signed link for this path, or an authenticated principal (or neither)."""

    def __init__(self, svc: Services, request: Request, principal: Principal | None, params: dict[str, str]) -> None:
        self.svc = svc
        self.principal = principal
        links = svc.payments.documents
        q = request.query_params
        self.signed = links is not None and links.check(
            request.url.path, params, q.get("expires"), q.get("signature"), svc.payments.now()
        )

    async def may_read(self, project_id: uuid.UUID, rule: Rule) -> bool:
        if self.signed:
            return True
        if self.principal is None:
            return False
        try:
            await Authorizer(self.svc.db, self.svc.access_cache, self.principal).require(project_id, rule)
        except AppError:
            return False
        return True


def document_routes(services: Callable[[], Services]) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """The endpoints by name (app.py mounts them); `services` returns the app's services."""

    def guarded(
        handler: Callable[[Services, Request, Principal | None], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            svc = services()

            async def handle(principal: Principal | None, _: AppError | None) -> Response:
                # No credential is not refused here: a signed link needs none (else: 404).
                return await handler(svc, request, principal)

            return await edge.admitted(svc, request, handle)

        return endpoint

    async def readable(
        svc: Services,
        request: Request,
        principal: Principal | None,
        kind: str,
        project_of: Callable[[uuid.UUID], Awaitable[uuid.UUID | None]],
        rule: Rule = DOCUMENT_READ,
        params: dict[str, str] | None = None,
    ) -> tuple[uuid.UUID, uuid.UUID]:
        """The document's id (of `kind`) and its project, once the caller may read it; a malformed
        id, a missing document and one the caller may not read are the same 404."""
        try:
            doc_id = ids.decode(kind, request.path_params["id"], "id")
        except AppError:
            raise _NOT_FOUND from None
        project_id = await project_of(doc_id)
        if project_id is None or not await _Caller(svc, request, principal, params or {}).may_read(project_id, rule):
            raise _NOT_FOUND
        return doc_id, project_id

    async def invoice_pdf(svc: Services, request: Request, principal: Principal | None) -> Response:
        invoice_id, project_id = await readable(
            svc, request, principal, "invoice", lambda i: reads.invoice_project(svc.payments, i)
        )
        found = await reads.get_invoice(svc.payments, project_id, invoice_id)
        if found is None or found[0].number is None:
            raise _NOT_FOUND
        inv, lines, notes, project_name = found
        doc = printing.invoice_document(svc.settings, inv, lines, project_name, notes)
        return _pdf(await printing.render_invoice(doc), f"{inv.number}.pdf")

    async def credit_note_pdf(svc: Services, request: Request, principal: Principal | None) -> Response:
        note_id, project_id = await readable(
            svc, request, principal, "credit_note", lambda i: reads.credit_note_project(svc.payments, i)
        )
        found = await reads.get_credit_note(svc.payments, project_id, note_id)
        if found is None:
            raise _NOT_FOUND
        note, invoice_number, project_name = found
        doc = printing.credit_note_document(svc.settings, note, invoice_number, project_name)
        return _pdf(await printing.render_invoice(doc), f"{note.number}.pdf")

    async def wallet_project(wallet_id: uuid.UUID) -> uuid.UUID | None:
        ref = await services().ledger.wallet_ref(wallet_id)
        return ref.project_id if ref is not None else None

    async def statement_pdf(svc: Services, request: Request, principal: Principal | None) -> Response:
        raw_from, raw_to = request.query_params.get("from"), request.query_params.get("to")
        start, end = statements.period(_instant(raw_from, "from"), _instant(raw_to, "to"))
        signed = {"from": raw_from or "", "to": raw_to or ""}  # the link's signature covers the period
        wallet_id, project_id = await readable(
            svc, request, principal, "wallet", wallet_project, ledger_policy.READ, signed
        )
        async with svc.db.transaction(project_id=project_id) as s:
            st = await statements.summary(s, project_id, wallet_id, start, end)
            lines = await statements.entries(s, wallet_id, start, end, limit=statements.PDF_ENTRIES)
            details = await issuing.details_snapshot(s, project_id)
            name = await reads.project_name(s, project_id)
        doc = printing.statement_document(svc.settings, st, lines, details, name, svc.payments.now())
        return _pdf(await printing.render_statement(doc), f"statement-{ids.encode('wallet', wallet_id)}.pdf")

    async def invoices_csv(svc: Services, request: Request, principal: Principal | None) -> Response:
        if principal is None:
            raise Unauthenticated("missing credentials")
        if principal.kind != "user" or principal.user_id is None:
            raise Forbidden("platform admins only")
        if not await is_platform_admin(svc.db, principal.user_id):
            raise Forbidden("platform admins only")
        start = _instant(request.query_params.get("from"), "from")
        end = _instant(request.query_params.get("to"), "to")
        if end <= start:
            raise BadInput("to must be after from", field="to")
        if end - start > reads.MAX_EXPORT:
            raise BadInput("export at most 370 days per file", field="to")
        body = await reads.export_csv(svc.payments, start.astimezone(dt.UTC), end.astimezone(dt.UTC))
        name = f"invoices-{start.date().isoformat()}-{end.date().isoformat()}.csv"
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "private, no-store"},
        )

    return {
        "invoice_pdf": guarded(invoice_pdf),
        "credit_note_pdf": guarded(credit_note_pdf),
        "statement_pdf": guarded(statement_pdf),
        "invoices_csv": guarded(invoices_csv),
    }
