"""Helpers for tests, benchmarks and CPU demos: tiny real models built in code (no downloads)."""
