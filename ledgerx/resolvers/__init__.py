"""Query, Mutation and Subscription fields, one module per domain. Thin: authorize, parse, call domain."""
