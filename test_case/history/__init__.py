"""The cluster's memory: every preflight, run and verdict stored, trends drawn, regressions named
against the cluster's own past (docs/history.md)."""
