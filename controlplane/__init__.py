"""Keyward control plane: identities, tokens and audit events behind an admin API (FastAPI)."""
