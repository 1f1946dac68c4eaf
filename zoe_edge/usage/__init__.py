"""Per-request usage: one record per request, written to the SQLite ledger and counted in the metrics."""
