"""Stripe webhooks: the HTTP route (verify, store once, acknowledge) and the inbox processor."""
