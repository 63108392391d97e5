"""Benchmark scripts: they print figures; targets are checked by reading them, never in tests."""
