"""Reading nccl-tests' text output (``all_reduce_perf`` and its siblings) into typed records.

nccl-tests prints a header of ``#`` lines (its version from v2.17.4 on, the run's settings, one line
per rank: host, device, PCI bus), a table with one row per message size, out-of-place then in-place
(time in us, algorithm and bus bandwidth in GB/s, wrong elements or ``N/A``), and a trailer
(``# Out of bounds values``, ``# Avg bus bandwidth``). Read here as upstream's ``src/util.cu``
prints it at v2.19.6 and as older releases did (no ``root`` column, ``error`` for ``#wrong``, a
blank ``redop`` for alltoall), with the prefixes launchers add (``[1,0]<stdout>:`` from mpirun,
``0: `` from ``srun --label``) and NCCL's own log lines in between. The table is read by its
header's column names, so a flag that adds columns (``-S``, ``-I``) does not shift the others.

    python -m test_case.preflight.nccl_tests FILE...   # each run's devices, peak and average busbw
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER_PREFIX = re.compile(r"^(?:\[\d+,\d+\]<std(?:out|err)>:|\d+: )")
_RANK = re.compile(
    r"^#\s+Rank\s+(?P<rank>\d+)(?:\s+Group\s+\d+)?\s+Pid\s+(?P<pid>\d+)\s+on\s+(?P<host>\S+)\s+"
    r"device\s+(?P<device>\d+)\s+\[(?P<bus>[^\]]*)\]\s+(?P<name>.+?)\s*$"
)
_SETTINGS = re.compile(r"^#\s*nThread\s")
_TIME_COLUMNS = ("time", "cputime")


class NcclTestsError(ValueError):
    """Output that is not nccl-tests' table, or a row that cannot be read (the line is named)."""


@dataclass(frozen=True)
class Device:
    """One rank's line of ``# Using devices``."""

    rank: int
    host: str
    device: int
    bus_id: str
    name: str


@dataclass(frozen=True)
class Timing:
    """One half of a row: out-of-place or in-place."""

    time_us: float
    algbw_gbs: float
    busbw_gbs: float
    wrong: int | None  # elements that failed the check; None when not checked (N/A)


@dataclass(frozen=True)
class SizeResult:
    """One row of the table: one message size."""

    size_bytes: int
    count: int
    dtype: str
    redop: str | None  # None where the column is blank (alltoall in old releases)
    root: int | None  # None in releases without the column
    out_of_place: Timing
    in_place: Timing


@dataclass
class NcclTestsRun:
    """One run of an nccl-tests binary, as its output says."""

    source: str
    test: str | None = None  # "all_reduce_perf", from "# Collective test starting"
    version: str | None = None  # nccl-tests' own, from v2.17.4 on
    nccl_version: str | None = None  # "2.29.3+cuda13.1", from "NCCL version ..." when printed
    settings: dict[str, str] = field(default_factory=dict)  # nThread, nGpus, minBytes, iters...
    devices: list[Device] = field(default_factory=list)
    results: list[SizeResult] = field(default_factory=list)
    out_of_bounds: int | None = None
    avg_busbw_gbs: float | None = None

    @property
    def hosts(self) -> list[str]:
        return sorted({d.host for d in self.devices})

    @property
    def largest(self) -> SizeResult:
        """The row of the largest message: where busbw is nearest the link's capacity."""
        return max(self.results, key=lambda r: r.size_bytes)

    @property
    def peak_busbw_gbs(self) -> float:
        return max(max(r.out_of_place.busbw_gbs, r.in_place.busbw_gbs) for r in self.results)

    @property
    def wrong(self) -> int:
        """Elements that failed the check, over every row and both halves (N/A counts 0)."""
        return sum((r.out_of_place.wrong or 0) + (r.in_place.wrong or 0) for r in self.results)


def _strip(line: str) -> str:
    return LAUNCHER_PREFIX.sub("", line.rstrip("\n"))


def _columns(header: str) -> tuple[list[str], list[str]]:
    """The names before the first time column, and those of one half (time, algbw, busbw, wrong...)."""
    names = header.lstrip("#").split()
    starts = [i for i, name in enumerate(names) if name in _TIME_COLUMNS]
    if len(starts) != 2:
        raise NcclTestsError(f"a table header with {len(starts)} time column(s), not 2: {header.strip()!r}")
    lead, first, second = names[: starts[0]], names[starts[0] : starts[1]], names[starts[1] :]
    if [n.lower() for n in first] != [n.lower() for n in second]:
        raise NcclTestsError(f"out-of-place and in-place columns differ: {header.strip()!r}")
    return lead, first


def _timing(values: dict[str, str]) -> Timing:
    wrong = values.get("#wrong", values.get("error", "N/A"))
    time = values["time"] if "time" in values else values["cputime"]
    return Timing(float(time), float(values["algbw"]), float(values["busbw"]), None if wrong == "N/A" else int(wrong))


def _row(tokens: list[str], lead: list[str], half: list[str]) -> SizeResult:
    if len(tokens) == len(lead) + 2 * len(half) - 1 and "redop" in lead:  # a blank redop (old alltoall)
        tokens = [*tokens[: lead.index("redop")], "", *tokens[lead.index("redop") :]]
    if len(tokens) != len(lead) + 2 * len(half):
        raise NcclTestsError(f"{len(tokens)} values where the header names {len(lead) + 2 * len(half)}")
    first = dict(zip(lead, tokens, strict=False))
    rest = tokens[len(lead) :]
    oop = dict(zip(half, rest[: len(half)], strict=True))
    ip = dict(zip(half, rest[len(half) :], strict=True))
    return SizeResult(
        size_bytes=int(first["size"]),
        count=int(first["count"]),
        dtype=first["type"],
        redop=first.get("redop") or None,
        root=int(first["root"]) if "root" in first else None,
        out_of_place=_timing(oop),
        in_place=_timing(ip),
    )


def read_nccl_tests(text: str, source: str = "<output>") -> NcclTestsRun:
    """Read one run's output; ``NcclTestsError`` names the line when it is not what nccl-tests prints."""
    run = NcclTestsRun(source)
    lead: list[str] | None = None
    half: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip(raw)
        stripped = line.strip()
        if m := re.match(r"^#\s*nccl-tests version (\S+)", stripped):
            run.version = m.group(1)
        elif m := re.match(r"^#\s*Collective test starting: (\S+)", stripped):
            run.test = m.group(1)
        elif _SETTINGS.match(stripped):
            run.settings = _settings(stripped)
        elif m := _RANK.match(stripped):
            run.devices.append(Device(int(m["rank"]), m["host"], int(m["device"]), m["bus"], m["name"]))
        elif m := re.match(r"^NCCL version (\S+)", stripped):
            run.nccl_version = m.group(1)
        elif stripped.startswith("#") and re.search(r"\bsize\b.*\bcount\b.*\btype\b", stripped):
            lead, half = _columns(stripped)
        elif m := re.match(r"^#\s*Out of bounds values\s*:\s*(\d+)", stripped):
            run.out_of_bounds = int(m.group(1))
        elif m := re.match(r"^#\s*Avg bus bandwidth\s*:\s*(\S+)", stripped):
            run.avg_busbw_gbs = float(m.group(1))
        elif lead is not None and re.match(r"^\d+\s+\d+\s", stripped):
            try:
                run.results.append(_row(stripped.split(), lead, half))
            except (NcclTestsError, KeyError, ValueError) as err:
                raise NcclTestsError(
                    f"{source}, line {number}: not a result row of the table above ({err}): {raw!r}"
                ) from err
    if lead is None:
        raise NcclTestsError(
            f"{source}: no results table (no '#  size  count  type ...' header line): is it nccl-tests output?"
        )
    if not run.results:
        raise NcclTestsError(f"{source}: a results table with no rows: the run stopped before its first size")
    return run


def _settings(line: str) -> dict[str, str]:
    """``# nThread 1 nGpus 8 minBytes 8 maxBytes 17179869184 step: 2(factor) warmup iters: 5 ...``."""
    words = line.lstrip("#").split()
    settings: dict[str, str] = {}
    key: list[str] = []
    for word in words:
        if key and (word[0].isdigit() or word[0] == "-"):
            settings[" ".join(key).rstrip(":")] = word
            key = []
        else:
            key.append(word)
    return settings


def _gb(value: float) -> str:
    return f"{value:.2f} GB/s"


def summary(run: NcclTestsRun) -> list[str]:
    """A few lines per run: what ran where, the largest size's busbw, the peak and the average."""
    top = run.largest
    hosts = ", ".join(f"{h} ({sum(d.host == h for d in run.devices)})" for h in run.hosts) or "not listed"
    lines = [
        f"{run.source}: {run.test or 'nccl-tests'} {run.version or '(version not printed)'}, NCCL "
        f"{run.nccl_version or '(not printed)'}; {len(run.devices)} rank(s) listed on {hosts}",
        f"  largest size {top.size_bytes} B: busbw {_gb(top.out_of_place.busbw_gbs)} out of place, "
        f"{_gb(top.in_place.busbw_gbs)} in place; peak {_gb(run.peak_busbw_gbs)}",
        f"  average busbw {_gb(run.avg_busbw_gbs) if run.avg_busbw_gbs is not None else 'not printed'}; "
        f"wrong elements {run.wrong}; out of bounds {run.out_of_bounds if run.out_of_bounds is not None else '-'}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m test_case.preflight.nccl_tests", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "files", nargs="+", type=Path, help="saved stdout of all_reduce_perf (or another nccl-tests binary)"
    )
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            run = read_nccl_tests(path.read_text(errors="replace"), str(path))
        except (OSError, NcclTestsError) as err:
            print(f"nccl_tests: error: {err}", file=sys.stderr)
            status = 1
            continue
        print("\n".join(summary(run)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
