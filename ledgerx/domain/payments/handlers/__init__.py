"""What each Stripe event does to LedgerX, independent of the order events arrive in.

Every handler can run any number of times for the same event (replays, redeliveries,
reconciliation) without changing the books twice:
- money moves only through ledger postings keyed by Stripe ids, inside the transaction that
  writes the Payment/Invoice rows recording them (so the rows and the books agree);
- state rows only move forward: invoices by status rank (PAID and VOID are final), subscriptions
  by snapshot time, refunds and disputes once per Stripe refund/dispute id;
- an event that refers to something not recorded yet (a refund that overtook its checkout) fails
  with `NotReady` and is retried with backoff, by when the earlier event has been processed.
"""
