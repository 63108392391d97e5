"""Harness of the MPT Slurm benchmark suite: launch logic, log parsing, metrics and reports."""
