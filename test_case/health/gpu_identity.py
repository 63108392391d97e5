"""GPU identity and firmware: ``nvidia-smi -q`` (and ``--query-gpu`` csv), what must agree across nodes.

Owns: parsing the full ``nvidia-smi -q`` report into `GpuInfo` records (product name, serial, UUID,
VBIOS, bus id, driver and CUDA versions, the Remapped Rows and GPU Reset Status fields, and every other
field by its section path), parsing ``nvidia-smi --query-gpu=... --format=csv`` into the same records,
`identity_facts` (the values every node of a job must share, for the preflight's cross-node agreement)
and the findings about one node's GPUs.

The rules (`findings`), with their sources:

* Remapped Rows ``Remapping Failure Occurred: Yes``: **drain**. NVIDIA: a row-remapping failure is one
  of the RMA policy thresholds ("Error Recovery and Response Flags", docs.nvidia.com/deploy/
  a100-gpu-mem-error-mgmt/error-recovery-and-response-flags.html); gpud suggests hardware inspection
  (leptonai/gpud@4a8de33a3f02 components/accelerator/nvidia/remapped-rows);
* Remapped Rows ``Pending: Yes``: **reset**. NVIDIA: the remapping "will happen at the next GPU reset"
  (same page; NVML ``nvmlDeviceGetRemappedRows``: "A reset will be required to actually remap the
  row"); gpud: "row remapping pending requires GPU reset or system reboot";
* GPU Reset Status ``Reset Required: Yes`` or ``Drain and Reset Recommended: Yes``: **reset** (NVIDIA's
  recovery action flag: terminate the GPU's processes, ``nvidia-smi -r``, same page);
* GPUs of one model on one node with different VBIOS versions: **monitor**. Imbue's
  ``_VBiosVersionHealthCheck`` raises a warning, not an error, with "Update to the appropriate
  version" (imbue-ai/cluster-health@8f5964ac6209 health_checks/health_checks.py).

Across nodes, `identity_facts` gives the driver and CUDA versions, the product names and the VBIOS per
model; the preflight compares them between nodes (a node that differs is the one to look at).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from test_case.health.findings import Finding, run_tool

CHECK = "gpu_identity"
SOURCE_REMAP = (
    "NVIDIA GPU memory error management, Error Recovery and Response Flags "
    "(docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt); gpud remapped-rows (leptonai/gpud@4a8de33a3f02)"
)
SOURCE_VBIOS = "Imbue cluster-health _VBiosVersionHealthCheck, a warning (imbue-ai/cluster-health@8f5964ac6209)"

_GPU_HEADER = re.compile(r"^GPU (?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*$")
# --query-gpu csv header (with or without units) -> GpuInfo attribute
_CSV_FIELDS = {
    "name": "product_name",
    "pci.bus_id": "bus_id",
    "vbios_version": "vbios",
    "serial": "serial",
    "uuid": "uuid",
    "driver_version": "driver_version",
}


@dataclass
class GpuInfo:
    """One GPU, as ``nvidia-smi -q`` (or ``--query-gpu``) describes it."""

    bus_id: str = ""  # "00000000:53:00.0"
    product_name: str = ""
    serial: str = ""
    uuid: str = ""
    vbios: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    # every field by its section path: "Remapped Rows/Pending", "ECC Mode/Pending",
    # "ECC Errors/Volatile/DRAM Uncorrectable", "Retired Pages/Pending Page Blacklist", "PCI/Replays Since Reset"
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    def flag(self, path: str) -> bool | None:
        """A Yes/No field as a bool; None when the report does not have it (or says N/A)."""
        value = self.fields.get(path, "").strip().lower()
        return {"yes": True, "no": False}.get(value)

    @property
    def remap_pending(self) -> bool | None:
        return self.flag("Remapped Rows/Pending")

    @property
    def remap_failure(self) -> bool | None:
        return self.flag("Remapped Rows/Remapping Failure Occurred")

    @property
    def ecc_mode_pending(self) -> str:
        """``ECC Mode/Pending`` (Enabled/Disabled): the ECC mode after the next reset; "" when absent."""
        return self.fields.get("ECC Mode/Pending", "")

    @property
    def subject(self) -> str:
        return f"GPU {self.bus_id}" if self.bus_id else f"GPU {self.uuid or self.serial or '?'}"


def parse_nvidia_smi_q(text: str) -> list[GpuInfo]:
    """The GPUs of ``nvidia-smi -q`` output; each field also kept by its section path in ``fields``
    (``[...]`` lines, an author's cuts in a published excerpt, are skipped)."""
    top: dict[str, str] = {}
    gpus: list[GpuInfo] = []
    stack: list[tuple[int, str]] = []  # (indent, section name) above the current line
    for raw in text.splitlines():
        if not raw.strip() or raw.strip() == "[...]" or raw.startswith("="):
            continue
        header = _GPU_HEADER.match(raw)
        if header:
            gpus.append(GpuInfo(bus_id=header.group("bus")))
            stack = []
            continue
        indent = len(raw) - len(raw.lstrip())
        key, sep, value = raw.strip().partition(":")
        key = key.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if not sep:  # a section title: "Remapped Rows"
            stack.append((indent, key))
            continue
        if not gpus:
            top[key] = value.strip()
            continue
        gpus[-1].fields["/".join([name for _, name in stack] + [key])] = value.strip()
    for gpu in gpus:
        f = gpu.fields
        gpu.product_name = f.get("Product Name", "")
        gpu.serial = f.get("Serial Number", "")
        gpu.uuid = f.get("GPU UUID", "")
        gpu.vbios = f.get("VBIOS Version", "")
        gpu.bus_id = f.get("PCI/Bus Id", gpu.bus_id)
        gpu.driver_version = top.get("Driver Version", "")
        gpu.cuda_version = top.get("CUDA Version", "")
    return gpus


def parse_query_gpu_csv(text: str) -> list[GpuInfo]:
    """The rows of ``nvidia-smi --query-gpu=name,pci.bus_id,vbios_version,... --format=csv`` (with its
    header line). nvidia-smi's own refusal ("Field ... is not a valid field to query.") is a ValueError."""
    lines = [line for line in text.splitlines() if line.strip() and line.strip() != "[...]"]
    if not lines or "is not a valid field" in lines[0] or lines[0].startswith("NVIDIA-SMI has failed"):
        raise ValueError(f"nvidia-smi --query-gpu gave no csv: {lines[0] if lines else 'nothing'}")
    rows = list(csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True))
    names = [h.strip().split(" [")[0] for h in rows[0]]  # "memory.total [MiB]" -> "memory.total"
    gpus = []
    for row in rows[1:]:
        gpu = GpuInfo()
        for name, value in zip(names, row, strict=False):
            gpu.fields[name] = value.strip()
            if name in _CSV_FIELDS:
                setattr(gpu, _CSV_FIELDS[name], value.strip())
        gpus.append(gpu)
    return gpus


def device_id(gpu: GpuInfo) -> str:
    """What names one GPU wherever it moves: its board serial, else its UUID (nvidia-smi prints ``N/A`` for
    a serial on some boards), else its bus id on this node."""
    for value in (gpu.serial, gpu.uuid):
        if value and value.upper() != "N/A":
            return value
    return f"bus {gpu.bus_id}"


def identity_facts(gpus: list[GpuInfo]) -> dict[str, str]:
    """The values every node of a job must share: driver and CUDA versions, the GPU product names, and
    the VBIOS versions per product (several, comma-separated, when the node's own GPUs differ)."""
    facts: dict[str, str] = {}

    def joined(values: list[str]) -> str:
        return ", ".join(sorted({v for v in values if v}))

    for key, values in (
        ("driver_version", [g.driver_version for g in gpus]),
        ("cuda_version", [g.cuda_version for g in gpus]),
        ("product_name", [g.product_name for g in gpus]),
    ):
        if joined(values):
            facts[key] = joined(values)
    for model in sorted({g.product_name for g in gpus}):
        vbios = joined([g.vbios for g in gpus if g.product_name == model])
        if vbios:
            facts[f"vbios_version[{model or 'unknown'}]"] = vbios
    return facts


def findings(gpus: list[GpuInfo]) -> list[Finding]:
    """One finding per GPU (healthy, reset or drain) and one per model whose VBIOS differs within the node."""
    found: list[Finding] = []
    for gpu in gpus:
        reset_fields = [
            f"{path.split('/')[-1]}: Yes"
            for path in ("GPU Reset Status/Reset Required", "GPU Reset Status/Drain and Reset Recommended")
            if gpu.flag(path)
        ]
        if gpu.remap_failure:
            found.append(
                Finding(
                    CHECK,
                    gpu.subject,
                    "drain",
                    f"row remapping failed on {gpu.product_name} serial {gpu.serial}: an RMA case",
                    "Remapping Failure Occurred: Yes",
                    SOURCE_REMAP,
                )
            )
        elif gpu.remap_pending:
            found.append(
                Finding(
                    CHECK,
                    gpu.subject,
                    "reset",
                    "row remapping pending: it takes effect at the next GPU reset",
                    "Pending: Yes",
                    SOURCE_REMAP,
                )
            )
        elif reset_fields:
            found.append(
                Finding(
                    CHECK,
                    gpu.subject,
                    "reset",
                    "nvidia-smi asks for a GPU reset",
                    "; ".join(reset_fields),
                    SOURCE_REMAP,
                )
            )
        else:
            found.append(
                Finding(
                    CHECK,
                    gpu.subject,
                    "healthy",
                    f"{gpu.product_name} serial {gpu.serial or '?'}, VBIOS {gpu.vbios or '?'}, "
                    "no row remapping pending",
                    f"VBIOS Version: {gpu.vbios}" if gpu.vbios else "",
                )
            )
    for model in sorted({g.product_name for g in gpus}):
        versions = sorted({g.vbios for g in gpus if g.product_name == model and g.vbios})
        if len(versions) > 1:
            found.append(
                Finding(
                    CHECK,
                    "node",
                    "monitor",
                    f"{model} GPUs of this node run different VBIOS versions ({', '.join(versions)}): "
                    "update them to one",
                    "; ".join(f"{g.bus_id}: VBIOS Version: {g.vbios}" for g in gpus if g.product_name == model),
                    SOURCE_VBIOS,
                )
            )
    return found


def read_nvidia_smi_q() -> list[GpuInfo] | None:
    """``nvidia-smi -q`` on this host, parsed; None when nvidia-smi is not on PATH or fails."""
    out = run_tool("nvidia-smi", "-q")
    return None if out is None or out.returncode != 0 else parse_nvidia_smi_q(out.stdout)
