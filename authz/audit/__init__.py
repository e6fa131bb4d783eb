"""The data plane's half of the audit store: spool every record durably, ship it when possible.

authz writes a *decision* line for every Check before answering it, and an *outcome* line for every
access-log entry Envoy streams to it; the shipper sends both, in order, to the control plane's
ingest endpoint. The spool is the only place a record lives until the store has confirmed it.
"""
