"""Starlette app factory: routes, middleware and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from ledgerx import heap, logs, metrics
from ledgerx.dashboard import routes as dashboard_routes
from ledgerx.graphql_schema import build_schema
from ledgerx.graphql_view import GraphQLView
from ledgerx.http.documents import document_routes
from ledgerx.http.entitlements import EntitlementEndpoint
from ledgerx.http.transactions import transactions_endpoint
from ledgerx.http.usage import usage_endpoint
from ledgerx.middleware import CrossOrigin, RequestContext
from ledgerx.services import Services
from ledgerx.settings import Settings
from ledgerx.webhooks import stripe as stripe_webhooks

log = logging.getLogger("ledgerx.app")


def serve_app() -> Starlette:
    """The factory of each `ledgerx serve --workers N` process: settings from the environment the
    command prepared (cli.cmd_serve), the heap settled as in a single process."""
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    return create_app(settings, settle_heap=True)


def create_app(
    settings: Settings | None = None, services: Services | None = None, *, settle_heap: bool = False
) -> Starlette:
    """Build the ASGI app. Tests pass ready `services`; otherwise the lifespan builds and closes them.
    `settle_heap`: a serving process freezes its startup heap (heap.py) once the lifespan started."""
    settings = settings or (services.settings if services else Settings.from_env())
    holder: dict[str, Services] = {}
    if services is not None:
        holder["services"] = services

    def svc() -> Services:
        return holder["services"]

    class _LazyView:
        """The view needs services, which exist only once the lifespan has started."""

        view: GraphQLView | None = None

        def ready(self) -> GraphQLView:
            if self.view is None:
                self.view = GraphQLView(svc(), build_schema(settings))
            return self.view

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            await self.ready()(scope, receive, send)

    graphql = _LazyView()

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks: dict[str, str] = {}
        s = svc()
        try:
            await asyncio.wait_for(s.db.ping(), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports every failure rather than raising
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(s.redis.ping(), timeout=2)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    async def metrics_route(request: Request) -> Response:
        # METRICS_TOKEN (bearer) guards the route; in production it is off (404) without one.
        allowed = metrics.scrape_status(
            request.headers.get("authorization"), settings.metrics_token, production=settings.production
        )
        if allowed == 404:
            return PlainTextResponse("Not Found", status_code=404)
        if allowed == 401:
            challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
            return PlainTextResponse("unauthorized", status_code=401, headers=challenge)
        await metrics.refresh(svc())  # pools and backlogs are read at scrape time
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def jwks(_: Request) -> Response:
        return JSONResponse(svc().keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def stripe_webhook(request: Request) -> Response:
        s = svc()
        return await stripe_webhooks.receive(s.payments, request, s.webhook_processor.wake)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        owned = "services" not in holder
        if owned:
            holder["services"] = Services.build(settings)
        sender = holder["services"].mail_sender  # set only when SMTP_URL is configured
        if sender is not None and holder["services"].settings.worker_enabled:
            sender.start()
        scheduler = holder["services"].scheduler if holder["services"].settings.scheduler_enabled else None
        if scheduler is not None:
            scheduler.start()
        processor = holder["services"].webhook_processor if holder["services"].settings.worker_enabled else None
        if processor is not None:
            processor.start()
            holder["services"].webhook_delivery.start()
        followers = [asyncio.create_task(holder["services"].changes.follow(), name="ledgerx-project-changes")]
        revocations = holder["services"].tokens.revocations
        if revocations is not None:
            followers.append(asyncio.create_task(revocations.follow(), name="ledgerx-session-revocations"))
        if settle_heap:
            graphql.ready()
            heap.settle()
        try:
            yield
        finally:
            for follower in followers:
                follower.cancel()
            for follower in followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if processor is not None:
                await processor.stop()
                await holder["services"].webhook_delivery.stop()
            if scheduler is not None:
                await scheduler.stop()
            if sender is not None:
                await sender.stop()
            if owned:
                await holder["services"].close()

    documents = document_routes(svc)
    entitlements = EntitlementEndpoint(svc)
    routes = [
        # The hot routes first: Starlette tries each route's pattern in order.
        Route("/v1/entitlements/{featureKey}", entitlements, methods=["GET"]),
        Route("/v1/entitlements", entitlements, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_route),
        Route("/.well-known/jwks.json", jwks),
        *dashboard_routes(),
        Route("/v1/usage", usage_endpoint(svc), methods=["POST"]),
        Route("/v1/transactions", transactions_endpoint(svc), methods=["POST"]),
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/invoices/{id}.pdf", documents["invoice_pdf"], methods=["GET"]),
        Route("/credit-notes/{id}.pdf", documents["credit_note_pdf"], methods=["GET"]),
        Route("/wallets/{id}/statement.pdf", documents["statement_pdf"], methods=["GET"]),
        Route("/admin/invoices.csv", documents["invoices_csv"], methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestContext),
        Middleware(
            CrossOrigin,
            allow_origins=list(settings.cors_origins),
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Api-Key", "X-Request-Id", "Idempotency-Key"],
            expose_headers=[
                "X-Request-Id",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
