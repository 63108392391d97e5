"""The durations every test run records (tests/durations.py), from a real pytest run of passing,
failing, skipped and erroring tests, and the per-module table `.ci/run` prints from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.durations import main, module_table

CONFTEST = """
import os
from pathlib import Path

from tests.durations import Recorder


def pytest_configure(config):
    config.pluginmanager.register(Recorder(Path(os.environ["TEST_DURATIONS"])), "durations")
"""

TESTS = """
import time

import pytest


@pytest.fixture
def broken():
    raise RuntimeError("set-up fails")


def test_slow():
    time.sleep(0.3)


def test_fails():
    assert False


def test_skipped():
    pytest.skip("not here")


def test_errors(broken):
    pass
"""


def test_a_run_records_every_tests_seconds_and_outcome_and_the_table_adds_them_up(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_one.py").write_text(TESTS)
    (tmp_path / "test_two.py").write_text("def test_quick():\n    pass\n")
    record = tmp_path / "durations.json"
    env = {**os.environ, "TEST_DURATIONS": str(record), "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1, out.stdout  # one failed, one error
    assert "minutes per test module (tests/durations.py)" in out.stdout
    doc = json.loads(record.read_text())
    tests = {nodeid.split("::")[1]: entry for nodeid, entry in doc["tests"].items()}
    assert {name: entry["outcome"] for name, entry in tests.items()} == {
        "test_slow": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
        "test_errors": "error",
        "test_quick": "passed",
    }
    assert tests["test_slow"]["call"] >= 0.3 and doc["ended"] >= doc["started"]
    table = module_table(doc["tests"])
    assert table[1].split()[:5] == ["test_one", "4", "1", "2", "1"]  # the slowest module first
    assert table[2].split()[:5] == ["test_two", "1", "1", "0", "0"]
    assert table[-1].split()[:6] == ["all", "tests", "5", "2", "2", "1"]


def test_the_table_of_a_recorded_run_says_what_ran_before_pytest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    record = tmp_path / "d.json"
    tests = {
        "tests/test_a.py::test_x": {"setup": 60.0, "call": 60.0, "teardown": 0.0, "outcome": "passed"},
        "tests/test_b.py::test_y": {"call": 30.0, "outcome": "passed"},
    }
    record.write_text(json.dumps({"started": now - 200, "ended": now - 10, "tests": tests}))
    assert main([str(record), "--since", str(now - 380)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == ["test_a", "1", "1", "0", "0", "2.0", "80%"]
    assert printed[3].split() == ["test_b", "1", "1", "0", "0", "0.5", "20%"]
    assert printed[5].split()[-1] == "3.2"  # pytest's wall time: 190 s
    assert printed[6].startswith("before pytest (install, lint): 3.0 min")
    assert main([str(tmp_path / "missing.json")]) == 1
