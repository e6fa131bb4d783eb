"""The audit store: hash-chained, append-only records of every request and every action."""
