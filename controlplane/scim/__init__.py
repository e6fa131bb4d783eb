"""SCIM 2.0 service provider (RFC 7643 / 7644) at ``/scim/v2``: users and groups pushed by the IdP.

Resources are validated and serialised with ``scim2-models``; filters are parsed by its RFC grammar
and translated here into SQL with bound parameters only.
"""
