"""What the control plane does, as keyword-only functions over one session each.

Every surface (the admin API, SCIM, the OIDC pages, the CLI through the API) calls these; none
re-implements a rule. Each mutating function records its event (:mod:`controlplane.audit.events`) in
the caller's transaction, so a change and its audit record commit together or not at all.

* :mod:`.rows` — get-or-404, insert-and-record, public documents, keyset pages;
* :mod:`.credentials` — every credential kind: prefix, minting, hashing, hints, authentication;
* :mod:`.lifecycle` — the token lifecycle: mint, list, narrow, rotate, revoke, expire, dormant;
* :mod:`.users`, :mod:`.teams`, :mod:`.profiles`, :mod:`.service_accounts` — identities and policy;
* :mod:`.api_credentials`, :mod:`.scim_connections` — who may call the admin API and SCIM.
"""
