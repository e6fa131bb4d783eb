"""Keyward authz: the Envoy ext_authz gRPC service that answers every gateway request from memory."""
