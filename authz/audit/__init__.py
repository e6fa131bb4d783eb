"""The data plane's half of the audit store: spool every record durably, ship it when possible.

authz writes a *decision* line for every Check before answering it, and an *outcome* line for every
access-log entry Envoy streams to it; both go through :mod:`authz.audit.emitter`, which refuses a
Check whose decision line cannot be spooled. :mod:`authz.audit.records` builds the lines,
:mod:`authz.audit.spool` holds them, and :mod:`authz.audit.shipper` sends them, in order, to the
control plane's ingest endpoint. The spool is the only place a record lives until the store has
confirmed it.
"""
