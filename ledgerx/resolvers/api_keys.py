"""Api keys fields (define `Query`, `Mutation`, `Subscription` classes here)."""
