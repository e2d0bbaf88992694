"""Business rules, free of GraphQL and HTTP."""
