"""Where the test suite's time goes: every test's seconds, recorded by every pytest run, and the
per-module table of minutes that `make test` and `.ci/run` print at their end.

`Recorder` is the pytest plugin (registered in tests/conftest.py): it adds each test's setup, call and
teardown seconds and writes ``test-durations.json`` (or ``$TEST_DURATIONS``) when the session ends.
A session fixture's set-up (the local Slurm cluster, the demo's data) counts to the first test that
asks for it, so to that test's module; when the fault-tolerance jobs run in the background
(tests/conftest.py, ``background``), the cluster's start and theirs count to the session's first
test. Standard library only: ``.ci/run`` reads the file with the system Python, whatever happened to
the venv.

    python3 tests/durations.py [FILE] [--since EPOCH]   # the table; --since adds what ran before pytest
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # the table is printed last, after pytest's own summaries; .ci/run reads a file without pytest
    from pytest import hookimpl

    print_last = hookimpl(trylast=True)
except ImportError:  # pragma: no cover

    def print_last(hook: Any) -> Any:
        return hook


DEFAULT_FILE = Path(__file__).resolve().parent.parent / "test-durations.json"


def durations_file() -> Path:
    """Where a run writes its durations: ``$TEST_DURATIONS`` or ``test-durations.json`` in the repository."""
    return Path(os.environ.get("TEST_DURATIONS") or DEFAULT_FILE)


@dataclass(eq=False)  # a pytest plugin object must be hashable
class Recorder:
    """Seconds per test and phase, and each test's outcome; written to ``path`` at the session's end."""

    path: Path
    started: float = field(default_factory=time.time)
    tests: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self.tests[report.nodeid]
        entry[report.when] = round(report.duration, 3)
        if report.when == "call":
            entry["outcome"] = report.outcome
        elif report.outcome == "failed":  # a set-up or teardown that failed: pytest's "error"
            entry["outcome"] = "error"
        elif report.outcome == "skipped":
            entry["outcome"] = "skipped"

    def pytest_sessionfinish(self, session: Any) -> None:
        doc = {"started": self.started, "ended": time.time(), "tests": dict(self.tests)}
        self.path.write_text(json.dumps(doc, indent=1) + "\n")

    @print_last
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("=", "minutes per test module (tests/durations.py)")
        for line in module_table(dict(self.tests), time.time() - self.started):
            terminalreporter.write_line(line)


def module_of(nodeid: str) -> str:
    """``tests/test_x.py::test_y[1]`` -> ``test_x``."""
    return Path(nodeid.split("::", 1)[0]).stem


def module_table(tests: dict[str, dict[str, Any]], wall_s: float | None = None) -> list[str]:
    """One line per module, slowest first: tests, passed, failed, skipped, minutes, share of the run."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for nodeid, entry in tests.items():
        module = module_of(nodeid)
        seconds[module] += sum(entry.get(phase, 0.0) for phase in ("setup", "call", "teardown"))
        counts[module][entry.get("outcome", "passed")] += 1
    total = sum(seconds.values())
    width = max([len(m) for m in seconds] + [len("module")])
    lines = [f"{'module':<{width}}  tests  passed  failed  skipped  minutes  share"]
    for module in sorted(seconds, key=lambda m: -seconds[m]):
        c = counts[module]
        lines.append(
            f"{module:<{width}}  {sum(c.values()):>5}  {c['passed']:>6}  {c['failed'] + c['error']:>6}  "
            f"{c['skipped']:>7}  {seconds[module] / 60:>7.1f}  {seconds[module] / total if total else 0:>5.0%}"
        )
    n = sum(sum(c.values()) for c in counts.values())
    passed = sum(c["passed"] for c in counts.values())
    failed = sum(c["failed"] + c["error"] for c in counts.values())
    skipped = sum(c["skipped"] for c in counts.values())
    lines.append(f"{'all tests':<{width}}  {n:>5}  {passed:>6}  {failed:>6}  {skipped:>7}  {total / 60:>7.1f}")
    if wall_s is not None:
        lines.append(f"{'pytest, wall':<{width}}  {'':>5}  {'':>6}  {'':>6}  {'':>7}  {wall_s / 60:>7.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the table of a recorded run (``.ci/run`` calls this at its end)."""
    parser = argparse.ArgumentParser(prog="python3 tests/durations.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=durations_file())
    parser.add_argument("--since", type=float, help="epoch seconds the whole run started (adds 'before pytest')")
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.file.read_text())
    except (OSError, ValueError) as err:
        print(f"durations: no test durations to show ({args.file}: {err})", file=sys.stderr)
        return 1
    print(f"== minutes per test module ({args.file}) ==")
    for line in module_table(doc["tests"], doc["ended"] - doc["started"]):
        print(line)
    if args.since is not None:
        before = (doc["started"] - args.since) / 60
        after = (time.time() - doc["ended"]) / 60
        print(f"before pytest (install, lint): {before:.1f} min; after pytest: {after:.1f} min")
        print(f"in all: {(time.time() - args.since) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
