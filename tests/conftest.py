"""Shared fixtures. The e2e fixtures start the real stack once per session (see tests/e2e/conftest.py)."""
