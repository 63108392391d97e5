"""Host health findings (test_case.health): the classes, and tools read from PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from test_case.health.findings import Finding, action, run_tool, worst


def test_the_worst_class_wins_and_each_class_says_what_to_do() -> None:
    found = [Finding("xid", "GPU 0", "monitor", "x"), Finding("pcie", "GPU 1", "drain", "y")]
    assert worst(found) == "drain" and worst([]) == "healthy"
    assert "scontrol update nodename=node7 state=drain" in action("drain", "node7")
    assert "nvidia-smi -r" in action("reset", "node7") and action("healthy", "node7") == ""


def test_a_tool_is_read_from_path_and_a_missing_one_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "lspci"
    tool.write_text("#!/bin/sh\necho recorded; exit 3\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = run_tool("lspci", "-vvv")
    assert out is not None and (out.returncode, out.stdout) == (3, "recorded\n")
    assert run_tool("no-such-tool-here") is None
