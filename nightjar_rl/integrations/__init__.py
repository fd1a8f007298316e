"""Integrations with other serving engines (optional dependencies, imported only when used)."""
