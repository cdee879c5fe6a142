"""Operator tools: the dead-letter tools, reconciliation, and the worker's CLI commands (thin over them)."""
