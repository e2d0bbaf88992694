"""GraphQL types, inputs and scalars (one module per area). The schema itself is assembled in
`ledgerx.graphql_schema`, above the resolvers: this package imports no resolver."""
