"""The preflight's typed records: what `logs/preflight_<job-id>.json` holds (schema: docs/preflight.md).

One `Check` per thing measured on a node, a `NodeResult` per hostname, a `Failure` per failed check
with what to do, and `Bandwidth` curves for the collectives. Node tasks write `NodePart` files; the
verdict (`test_case.preflight.verdict`) turns them into one `PreflightReport`; the report reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]
Value = float | int | str | bool | None


@dataclass
class Check:
    """One measured fact of one node against what is expected of it."""

    status: Status
    measured: Value
    expected: Value
    unit: str = ""
    detail: str = ""  # how it was measured, or why it was skipped
    action: str = ""  # what to do when it fails
    finding_class: str = ""  # a host health finding's class (test_case.health.findings), else empty
    evidence: str = ""  # the tool's line the finding rests on, verbatim


@dataclass
class BandwidthPoint:
    """One message size of one collective, as nccl-tests defines the figures."""

    bytes: int
    time_s: float  # per operation, the slowest rank's
    algbw_gbps: float  # bytes / time
    busbw_gbps: float  # algbw x the collective's factor (all_reduce 2(n-1)/n, sendrecv 1, the others (n-1)/n)


@dataclass
class Bandwidth:
    """One collective over message sizes, on one set of ranks."""

    collective: str  # all_reduce | all_gather | reduce_scatter | all_to_all | sendrecv | all_reduce_perf (nccl-tests)
    scope: str  # "all nodes", "within <host>", "pair <host-a> <host-b>"
    ranks: int
    backend: str
    points: list[BandwidthPoint] = field(default_factory=list)
    expected_busbw_gbps: float | None = None
    expected_source: str = ""

    @property
    def peak_busbw_gbps(self) -> float:
        return max((p.busbw_gbps for p in self.points), default=0.0)


@dataclass
class NumericsResult:
    """One workload of the numerical agreement check (`test_case.preflight.numerics`) on one device."""

    workload: str
    digest: str  # SHA-256 of the result's bytes
    checksum: float  # the result's sum


@dataclass
class DeviceNumerics:
    """One device's results and what decides which devices must agree."""

    host: str
    rank: int
    device: str  # "cuda:3" or "cpu"
    kind: str  # device model, torch and CUDA versions: devices of one kind must agree bit for bit
    cpu_capability: str  # torch's CPU instruction path (not pinnable from inside the process)
    results: list[NumericsResult]


@dataclass
class NodePart:
    """What one node's task measured (a file in the parts folder, read by the verdict)."""

    hostname: str
    node_id: int
    checks: dict[str, Check]
    facts: dict[str, Value]  # versions, GPU model, devices: compared across nodes by the verdict
    matmul_tflops: list[float]  # one per device (GPU, or the node's CPU process)
    clock_offset_s: float | None = None
    bandwidth: list[Bandwidth] = field(default_factory=list)  # within the node, and nccl-tests
    numerics: list[DeviceNumerics] = field(default_factory=list)  # one per device (test_case.preflight.numerics)


@dataclass
class NodeResult:
    """One node in the report: its status and every check."""

    status: Literal["pass", "fail"]
    node_id: int | None
    checks: dict[str, Check]
    # what the node's task found: versions, GPU model, driver, and ``gpu_serials`` (each GPU's serial, else its
    # UUID, in nvidia-smi's order, which is CUDA's device order on a node of one GPU model); the results store
    # follows a GPU by it (docs/history.md)
    facts: dict[str, Value] = field(default_factory=dict)
    matmul_tflops: list[float] = field(default_factory=list)  # per device, in device order (the check is their median)


@dataclass
class Failure:
    """One failed check, the line a user acts on."""

    node: str
    check: str
    measured: Value
    expected: Value
    action: str
    finding_class: str = ""  # a host health finding's class (reset, reboot, drain), else empty
    evidence: str = ""  # the tool's line the finding rests on


@dataclass
class SlowLink:
    """The link between two nodes, slow while each of them is fast with other nodes: not a node to drain."""

    a: str
    b: str
    busbw_gbps: float | None  # their test's busbw (the pair's, or the confirming group's)
    reference_gbps: float
    how: str  # "all pairs" or "group testing"

    @property
    def action(self) -> str:
        return (
            f"the network path between {self.a} and {self.b} is slow while each is fast with the other nodes: "
            f"check the cables, ports and switch between them (ibdiagnet, or fi_pingpong/ib_write_bw between "
            "the two); neither node needs draining"
        )


@dataclass
class PreflightReport:
    """`logs/preflight_<job-id>.json`."""

    job_id: str
    status: Literal["pass", "fail"]
    nodes: dict[str, NodeResult]
    failures: list[Failure]
    bandwidth: list[Bandwidth]
    wall_s: float | None = None
    settings: dict[str, Value] = field(default_factory=dict)
    slow_links: list[SlowLink] = field(default_factory=list)  # a failure of the fabric, not of a node
    cluster: str | None = None  # SLURM_CLUSTER_NAME where the verdict ran; None outside Slurm or in older files
    measured_at: str | None = None  # when the verdict was written, UTC ISO 8601; None in older files

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PreflightReport:
        return cls(
            job_id=str(doc["job_id"]),
            status=doc["status"],
            nodes={
                host: NodeResult(
                    n["status"],
                    n.get("node_id"),
                    {k: Check(**c) for k, c in n["checks"].items()},
                    n.get("facts", {}),
                    n.get("matmul_tflops", []),
                )
                for host, n in doc["nodes"].items()
            },
            failures=[Failure(**f) for f in doc["failures"]],
            bandwidth=[bandwidth_record(b) for b in doc.get("bandwidth", [])],
            wall_s=doc.get("wall_s"),
            settings=doc.get("settings", {}),
            slow_links=[SlowLink(**link) for link in doc.get("slow_links", [])],
            cluster=doc.get("cluster"),
            measured_at=doc.get("measured_at"),
        )

    @classmethod
    def read(cls, path: Path) -> PreflightReport:
        return cls.from_dict(json.loads(path.read_text()))


def bandwidth_record(doc: dict[str, Any]) -> Bandwidth:
    """A `Bandwidth` from its JSON."""
    return Bandwidth(**{**doc, "points": [BandwidthPoint(**p) for p in doc["points"]]})


def write_part(path: Path, part: NodePart) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(part), indent=2) + "\n")
    tmp.replace(path)


def read_part(path: Path) -> NodePart:
    doc = json.loads(path.read_text())
    return NodePart(
        hostname=doc["hostname"],
        node_id=doc["node_id"],
        checks={k: Check(**c) for k, c in doc["checks"].items()},
        facts=doc["facts"],
        matmul_tflops=doc["matmul_tflops"],
        clock_offset_s=doc.get("clock_offset_s"),
        bandwidth=[bandwidth_record(b) for b in doc.get("bandwidth", [])],
        numerics=[numerics_record(n) for n in doc.get("numerics", [])],
    )


def numerics_record(doc: dict[str, Any]) -> DeviceNumerics:
    """A `DeviceNumerics` from its JSON."""
    return DeviceNumerics(**{**doc, "results": [NumericsResult(**r) for r in doc["results"]]})
