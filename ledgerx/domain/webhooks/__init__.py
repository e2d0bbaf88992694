"""Outbound webhooks: a project's endpoints, the transactional outbox and the delivery worker.

- `catalog`: the event types an endpoint may subscribe to (DESIGN.md "Outbound webhooks").
- `endpoints`: create, update, delete, rotate, list; the secret is shown once.
- `outbox`: `emit(tx, ...)` writes an event and its deliveries in the caller's transaction.
- `delivery`: the worker that claims due deliveries and sends them, signed (`signing`), to
  addresses the SSRF guard allows (`ssrf`); test events and redeliveries (`deliveries`).

This package imports nothing from the GraphQL or HTTP layers.
"""
