"""LedgerX's own invoices, taxes, credit notes and wallet statements (DESIGN.md "Invoices, taxes,
credit notes, statements"): numbering, tax computation, issuing, documents and their PDFs."""
