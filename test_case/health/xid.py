"""The kernel log's NVIDIA XID (GPU) and SXID (NVSwitch) lines, as health findings.

Owns: reading the kernel log from PATH tools (`read_kernel_log`: ``dmesg --time-format iso``, else
plain ``dmesg``, else ``journalctl -k -b``), limiting it to what came after a time (`lines_since`),
finding the XID/SXID lines in it in every form the recorded outputs show (`parse_kernel_log`), and
classing them, one `Finding` per GPU (or NVSwitch) and code, by the catalogue below (`findings`).

Line forms read (each recorded in ``../shared/gpu-outputs``, sources in its INDEX.md): ``dmesg -T``
(``[Sun Feb 23 16:24:18 2025] NVRM: Xid (PCI:0000:9b:00): 119, ...``), plain ``dmesg``
(``[74889.644138] NVRM: Xid ...``, seconds since boot: no wall time), a bare line, ``dmesg --decode
--time-format=iso`` (``kern  :err   : 2025-01-25T10:34:54,859532+00:00 nvidia-nvswitch1: SXid
(PCI:0000:84:00.0): 12028, ...``) and journalctl's ``short``/``short-iso`` prefixes (``Feb 23 16:24:18
host kernel: ...``, ``2025-02-23T16:24:18+0000 host kernel: ...``).

The catalogue (`CATALOGUE`) carries facts from NVIDIA's Xid catalogue for Ampere and newer GPUs,
"Analyzing Xid Errors with the Xid Catalog", https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html
(its "Resolution Bucket (Immediate Action)" column; read through the page and through the
spreadsheet's generated copy in leptonai/gpud, components/accelerator/nvidia/xid/catalog_generated.go).
The buckets map onto this package's classes: RESTART_APP and IGNORE -> monitor (the node is fine,
the program is restarted), RESET_GPU -> reset, RESTART_BM (restart bare metal) -> reboot,
CONTACT_SUPPORT -> drain (no fix on the node itself). Where the bucket is a workflow, the class
chosen and why is said in the entry. SXIDs: the line itself says ``Non-fatal`` or ``Fatal``; NVIDIA's
Fabric Manager user guide (https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/index.html,
"Runtime NVSwitch and GPU errors") has a fatal NVSwitch error recovered by resetting the GPUs and
NVSwitches of the baseboard (here: reboot), a non-fatal one logged and left (here: monitor).

Standard library only: this runs on the host (Slurm's HealthCheckProgram), see `findings.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from test_case.health.findings import SEVERITY, Finding, FindingClass, run_tool

CATALOGUE_SOURCE = (
    "NVIDIA Xid catalog, https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html "
    "(Resolution Bucket, Immediate Action)"
)
SXID_SOURCE = (
    "NVIDIA Fabric Manager user guide, https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/index.html "
    "(runtime NVSwitch errors: fatal -> reset GPUs and NVSwitches; non-fatal -> logged)"
)


@dataclass(frozen=True)
class Entry:
    """What NVIDIA's catalogue says of one code: our class, the meaning and NVIDIA's immediate action."""

    klass: FindingClass
    meaning: str
    nvidia: str  # the catalogue's immediate-action bucket, as NVIDIA spells it
    note: str = ""  # why the class, where the bucket is not a plain action


# XID code -> entry. Codes a user's own program causes (NVIDIA: RESTART_APP / IGNORE) are monitor:
# they say nothing bad about the node unless they repeat on one GPU across jobs.
CATALOGUE: dict[int, Entry] = {
    8: Entry("monitor", "GPU stopped processing (channel idle timeout)", "RESTART_APP"),
    13: Entry("monitor", "graphics engine exception (usually the program: out-of-bounds access)", "RESTART_APP"),
    31: Entry("monitor", "GPU memory page fault (usually the program: illegal address)", "RESTART_APP"),
    32: Entry("monitor", "invalid or corrupted push buffer stream", "RESTART_APP"),
    43: Entry("monitor", "GPU stopped processing (a channel the program used was reset)", "IGNORE"),
    45: Entry(
        "monitor",
        "preemptive cleanup after an earlier error",
        "WORKFLOW_XID_45",
        "follows another Xid: that one is the finding",
    ),
    46: Entry("reset", "GPU stopped processing (GPU timeout)", "RESET_GPU"),
    48: Entry(
        "reset",
        "double-bit ECC error",
        "WORKFLOW_XID_48",
        "the row remap that follows a DBE takes effect at the next GPU reset; a remap failure is Xid 64",
    ),
    61: Entry(
        "drain",
        "internal micro-controller breakpoint (listed as unused on Ampere and newer)",
        "CONTACT_SUPPORT",
    ),
    62: Entry("reset", "internal micro-controller halt", "RESET_GPU"),
    63: Entry(
        "monitor",
        "GPU memory row remapping event (a row marked for remapping)",
        "IGNORE",
        "the remap is applied at the next GPU reset; a pending remap shows in the remapped-rows check",
    ),
    64: Entry(
        "drain",
        "GPU memory row remapping failure",
        "RESET_GPU",
        "NVIDIA's investigatory action is CONTACT_SUPPORT: a bank with no spare row left is not mended by a "
        "reset, so the node is drained until the memory is looked at",
    ),
    68: Entry("monitor", "NVDEC0 (video decoder) exception", "RESTART_APP"),
    69: Entry("monitor", "graphics engine class error", "RESTART_APP"),
    74: Entry(
        "reset",
        "NVLink error",
        "WORKFLOW_NVLINK_ERR",
        "a GPU reset retrains the links; links that stay down are the NVLink check's drain",
    ),
    79: Entry("reboot", "GPU has fallen off the bus", "RESTART_BM"),
    92: Entry("monitor", "high single-bit ECC error rate (corrected)", "IGNORE"),
    94: Entry("monitor", "contained memory error (only the program that touched it was stopped)", "RESTART_APP"),
    95: Entry("reset", "uncontained memory error", "RESET_GPU"),
    109: Entry("reset", "context switch timeout", "RESET_GPU"),
    119: Entry("reset", "GSP RPC timeout", "RESET_GPU"),
    120: Entry("reset", "GSP error", "RESET_GPU"),
    121: Entry("monitor", "C2C (chip-to-chip) link error", "IGNORE"),
    136: Entry("reset", "NVLink training failed", "RESET_GPU"),
    140: Entry("reset", "unrecovered ECC error", "RESET_GPU"),
    143: Entry("reset", "GPU initialization error", "RESET_GPU"),
    154: Entry(
        "reset",
        "GPU recovery action changed",
        "XID_154",
        "the line names the new recovery action; read from it (`RECOVERY_ACTIONS`), reset when it cannot be read",
    ),
    155: Entry("reset", "NVLink software-defined error", "RESET_GPU"),
    156: Entry("reset", "resource retirement event", "RESET_GPU"),
    158: Entry("reset", "GPU fatal timeout", "RESET_GPU"),
}
# Xid 154's new recovery action (NVML's nvmlDeviceGpuRecoveryAction_t: 0 none, 1 GPU reset, 2 node
# reboot, 3 drain P2P, 4 drain P2P and reset) -> class.
RECOVERY_ACTIONS: dict[int, FindingClass] = {0: "monitor", 1: "reset", 2: "reboot", 3: "drain", 4: "drain"}
# Codes a user's program causes, or that follow its failure (NVIDIA: restart the application, or
# ignore): all monitor in `CATALOGUE`, the benign list.
APPLICATION_XIDS = frozenset({13, 31, 32, 43, 45, 69})
# SXID codes seen and sourced; any other SXID is classed by the Fatal/Non-fatal word of its line.
SXID_CATALOGUE: dict[int, Entry] = {
    12028: Entry("monitor", "NVSwitch egress non-posted PRIV error (reported non-fatal)", "non-fatal"),
}

_XID = re.compile(r"NVRM: Xid \(PCI:(?P<pci>[0-9A-Fa-f:.]+)\): (?P<code>\d+),?\s*(?P<message>.*)$")
_SXID = re.compile(
    r"(?P<device>nvidia-nvswitch\d*): SXid \(PCI:(?P<pci>[0-9A-Fa-f:.]+)\): (?P<code>\d+),?\s*(?P<message>.*)$"
)
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
_CTIME = re.compile(r"\[(\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]")
_RECOVERY = re.compile(r"\bto 0x(?P<action>[0-9a-fA-F]+)\b")


@dataclass(frozen=True)
class XidEvent:
    """One XID or SXID line of the kernel log."""

    kind: Literal["xid", "sxid"]
    code: int
    pci: str  # the bus id, normalised to domain:bus:device.function, lower case ("0000:9b:00.0")
    message: str  # what follows the code on the line
    line: str  # the line, verbatim
    time: datetime | None = None  # when the line carries a wall-clock time (dmesg -T / iso, journalctl)
    device: str = ""  # the NVSwitch's kernel name for an SXID ("nvidia-nvswitch2")


def normalise_pci(bus_id: str) -> str:
    """``0000:9B:00`` -> ``0000:9b:00.0``: NVRM leaves the function out of an Xid line (a GPU is function 0)."""
    bus_id = bus_id.lower()
    return bus_id if "." in bus_id else f"{bus_id}.0"


def line_time(prefix: str) -> datetime | None:
    """The wall-clock time in a line's prefix (ISO or ``dmesg -T``'s ctime), None when it has none
    (plain dmesg counts seconds since boot, journalctl's ``short`` form has no year)."""
    iso = _ISO.search(prefix)
    if iso:
        stamp = iso.group(0).replace(",", ".")
        try:
            return datetime.fromisoformat(stamp)
        except ValueError:
            return None
    ctime = _CTIME.search(prefix)
    if ctime:
        try:
            return datetime.strptime(" ".join(ctime.group(1).split()), "%a %b %d %H:%M:%S %Y")
        except ValueError:
            return None
    return None


def parse_kernel_log(text: str) -> list[XidEvent]:
    """Every XID and SXID line of ``text``, in the order of the log."""
    events: list[XidEvent] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        xid = _XID.search(line)
        if xid:
            events.append(
                XidEvent(
                    "xid",
                    int(xid["code"]),
                    normalise_pci(xid["pci"]),
                    xid["message"].strip(),
                    line,
                    line_time(line[: xid.start()]),
                )
            )
            continue
        sxid = _SXID.search(line)
        if sxid:
            events.append(
                XidEvent(
                    "sxid",
                    int(sxid["code"]),
                    normalise_pci(sxid["pci"]),
                    sxid["message"].strip(),
                    line,
                    line_time(line[: sxid.start()]),
                    sxid["device"],
                )
            )
    return events


def classify(event: XidEvent) -> tuple[FindingClass, str, str]:
    """One event's class, its one-line meaning and the rule's source."""
    if event.kind == "sxid":
        entry = SXID_CATALOGUE.get(event.code)
        if entry is not None:
            return entry.klass, entry.meaning, SXID_SOURCE
        words = event.message.lower()
        if "non-fatal" in words:
            return "monitor", "non-fatal NVSwitch error (not in this catalogue)", SXID_SOURCE
        if "fatal" in words:
            return "reboot", "fatal NVSwitch error (not in this catalogue)", SXID_SOURCE
        return "monitor", "NVSwitch error not in this catalogue, and its line does not say fatal", SXID_SOURCE
    entry = CATALOGUE.get(event.code)
    if entry is None:
        return (
            "monitor",
            "not in this check's catalogue (test_case/health/xid.py): look it up in NVIDIA's Xid catalog",
            CATALOGUE_SOURCE,
        )
    klass = entry.klass
    if event.code == 154:
        action = _RECOVERY.search(event.message)
        if action:
            klass = RECOVERY_ACTIONS.get(int(action["action"], 16), "reset")
    meaning = f"{entry.meaning} (NVIDIA: {entry.nvidia}{'; ' + entry.note if entry.note else ''})"
    return klass, meaning, CATALOGUE_SOURCE


def findings(events: Iterable[XidEvent]) -> list[Finding]:
    """One finding per GPU (or NVSwitch) and code, in the order first seen; its evidence is the
    latest line, its summary the count and the first and latest times where the lines have them."""
    groups: dict[tuple[str, str, int], list[XidEvent]] = {}
    for event in events:
        groups.setdefault((event.kind, event.pci, event.code), []).append(event)
    found: list[Finding] = []
    for (kind, pci, code), seen in groups.items():
        last = seen[-1]
        klass, meaning, source = classify(last)
        if code == 154:  # the worst recovery action any of its lines asked for
            klass = max((classify(e)[0] for e in seen), key=SEVERITY.__getitem__)
        name = "Xid" if kind == "xid" else "SXid"
        subject = f"GPU {pci}" if kind == "xid" else f"NVSwitch {pci} ({last.device})"
        times = [e.time for e in seen if e.time is not None]
        when = "" if not times else f", {times[0].isoformat()}"
        when += f" to {times[-1].isoformat()}" if len(times) > 1 else ""
        summary = f"{name} {code} x{len(seen)}{when}: {meaning}"
        found.append(Finding(kind, subject, klass, summary, last.line, source))
    return found


@dataclass(frozen=True)
class KernelLog:
    """The kernel log as a tool printed it, or None with why none could be read."""

    text: str | None
    source: str  # the command that gave it ("dmesg --time-format iso"), "" when none did
    reason: str = ""  # why the tools before it (or all of them) gave nothing


# Tried in order: dmesg with ISO times, plain dmesg (older util-linux, busybox), the journal's kernel
# messages of this boot with ISO times.
KERNEL_LOG_TOOLS: tuple[tuple[str, ...], ...] = (
    ("dmesg", "--time-format", "iso"),
    ("dmesg",),
    ("journalctl", "-k", "-b", "--no-pager", "-o", "short-iso"),
)


def read_kernel_log(since: datetime | None = None, timeout: float = 30.0) -> KernelLog:
    """The kernel log from the first tool on PATH that can read it (`KERNEL_LOG_TOOLS`); a tool that
    fails (dmesg is restricted to root where kernel.dmesg_restrict=1: "Operation not permitted") is
    said in ``reason`` and the next one tried. With ``since``, only what came after it (`lines_since`)."""
    reasons: list[str] = []
    for command in KERNEL_LOG_TOOLS:
        shown = " ".join(command)
        out = run_tool(*command, timeout=timeout)
        if out is None:
            if f"{command[0]}: not on PATH" not in reasons:
                reasons.append(f"{command[0]}: not on PATH")
            continue
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()
        if out.returncode != 0:
            reasons.append(f"{shown}: exit {out.returncode}: {said[0] if said else 'no message'}")
            continue
        if (
            command[0] == "journalctl"
            and "not seeing messages from other users and the system" in out.stdout + out.stderr
        ):
            reasons.append(f"{shown}: the journal hides the system's messages from this user")
            continue
        if since is None:
            return KernelLog(out.stdout, shown, "; ".join(reasons))
        if command == ("dmesg",):  # plain dmesg stamps seconds since boot
            reasons.append(f"{shown}: no wall-clock times, so nothing before {since.isoformat()} could be left out")
        return KernelLog(lines_since(out.stdout, since), shown, "; ".join(reasons))
    return KernelLog(None, "", "; ".join(reasons))


def lines_since(text: str, since: datetime) -> str:
    """The lines of ``text`` after ``since`` (for "since the last check"). A line without a time of
    its own (a call trace's continuation) goes with the line before it; lines before any timed line
    are kept, for a log whose times cannot be read (plain dmesg) cannot be cut and must not hide an
    error. Times without a zone are this host's local time."""
    after = since.astimezone()
    kept: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        stamp = line_time(line[:64])
        if stamp is not None:
            keep = stamp.astimezone() > after
        if keep:
            kept.append(line)
    return "".join(kept)
