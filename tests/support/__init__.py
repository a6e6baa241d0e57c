"""Shared test doubles and daemon starters (excluded from the mirrored-tests check)."""
