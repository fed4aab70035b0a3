"""Benchmarks: the proxy overhead benchmark and its helpers (mock upstream, bare baseline proxy, load generator)."""
