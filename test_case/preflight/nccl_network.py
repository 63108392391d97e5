"""Which network NCCL used between nodes, read from its ``NCCL_DEBUG=INFO`` init lines, and the
preflight check that fails a node where NCCL fell back to sockets beside an InfiniBand or EFA device.

The preflight's GPU workers run with ``NCCL_DEBUG=INFO``, ``NCCL_DEBUG_SUBSYS=INIT,NET`` and
``NCCL_DEBUG_FILE`` in the run's parts folder (`test_case.preflight.cli`), so the lines go to a file
per worker, not to the job log. The lines read (NCCL 2.19-2.26 and aws-ofi-nccl 1.12-1.13 as recorded
in shared/gpu-outputs, nccl-debug-info_*):

* ``host:pid:tid [dev] NCCL INFO Using network <name>``: ``IB`` (InfiniBand or RoCE), ``Socket``,
  ``AWS Libfabric`` (aws-ofi-nccl on EFA), or another plugin's name;
* ``NET/OFI Initializing aws-ofi-nccl <version>``: the network plugin; ``NET/Plugin ... No plugin
  found ... using internal implementation``: none;
* ``NET/OFI Selected Provider is efa``: the libfabric provider;
* ``NET/IB : Using [0]mlx5_10:1/RoCE ...`` and ``NET/Socket : Using [0]ens7:...``: the devices;
  ``NET/IB : No device found.``: why NCCL fell back;
* ``NCCL version <v>``.

A silent fallback to sockets is the failure this catches: with the plugin's folder missing from
``LD_LIBRARY_PATH`` or no RDMA libraries in the image, NCCL still runs, at a fraction of the fabric's
bandwidth.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from test_case.preflight.records import Check

INFO_LINE = re.compile(r"^(?:\d+: ?)?(?P<host>[^\s:]+):\d+:\d+ \[\d+\] NCCL INFO (?P<message>.*?)\s*$")
VERSION = re.compile(r"NCCL version (\S+)")
INFINIBAND = Path("/sys/class/infiniband")  # one folder per RDMA device: mlx5_* (IB, RoCE), rdmap* (EFA)


@dataclass
class NcclNetwork:
    """What NCCL's init lines of one host say about its network."""

    host: str
    network: str | None = None  # "IB", "Socket", "AWS Libfabric", ...
    plugin: str | None = None  # "aws-ofi-nccl 1.12.1-aws"; "internal" when NCCL found none
    provider: str | None = None  # libfabric's, e.g. "efa"
    version: str | None = None
    devices: str | None = None  # "mlx5_10:1/RoCE mlx5_11:1/RoCE", "ens7:10.128.0.32<0>"
    notes: list[str] = field(default_factory=list)  # e.g. "NET/IB : No device found."

    def describe(self) -> str:
        """``AWS Libfabric (aws-ofi-nccl 1.12.1-aws, provider efa), NCCL 2.23.4+cuda12.4``."""
        said = [x for x in (self.plugin, f"provider {self.provider}" if self.provider else None) if x]
        text = (self.network or "unknown") + (f" ({', '.join(said)})" if said else "")
        return text + (f", NCCL {self.version}" if self.version else "")


def read_nccl_debug(lines: Iterable[str]) -> dict[str, NcclNetwork]:
    """Per host, what its ``NCCL INFO`` lines say (`NcclNetwork`); a ``NCCL version`` line without
    a host prefix is the first host's."""
    hosts: dict[str, NcclNetwork] = {}
    loose_version: str | None = None
    for line in lines:
        m = INFO_LINE.match(line)
        if m is None:
            if v := VERSION.search(line):
                loose_version = v.group(1)
            continue
        found = hosts.setdefault(m.group("host"), NcclNetwork(m.group("host")))
        message = m.group("message")
        if message.startswith("Using network "):
            found.network = message.removeprefix("Using network ").strip()
        elif message.startswith("NET/OFI Initializing "):
            found.plugin = message.removeprefix("NET/OFI Initializing ").strip()
        elif message.startswith("NET/Plugin") and "internal implementation" in message:
            found.plugin = found.plugin or "internal"
        elif message.startswith("NET/OFI Selected Provider is "):
            found.provider = message.removeprefix("NET/OFI Selected Provider is ").split()[0]
        elif message.startswith(("NET/IB : Using ", "NET/Socket : Using ")):
            used = message.split(" : Using ", 1)[1].split("; OOB")[0]
            found.devices = " ".join(re.sub(r"^\[\d+\]", "", d) for d in used.split())
        elif message.startswith("NET/IB : No device found"):
            found.notes.append(message)
        elif v := VERSION.match(message):
            found.version = v.group(1)
    if loose_version and hosts:
        first = next(iter(hosts.values()))
        first.version = first.version or loose_version
    return hosts


def rdma_devices(folder: Path = INFINIBAND) -> list[str]:
    """This node's RDMA devices (InfiniBand, RoCE and EFA all appear here)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def network_check(found: NcclNetwork | None, nodes: int, rdma: list[str], drain: str) -> Check:
    """The ``nccl_network`` check of one node: fail when NCCL used sockets on a node with RDMA
    devices in a job of several nodes; ``drain`` is the action's last resort for this node."""
    if found is None or found.network is None:
        return Check("skip", None, None, "", "no NCCL init lines (a CPU node, or NCCL_DEBUG_FILE not written)")
    measured = found.describe()
    if nodes < 2:
        return Check("pass", measured, "any", "", "one node: NCCL sends nothing over the network")
    if found.network.lower() == "socket" and rdma:
        why = "; ".join(found.notes) or "its IB transport and network plugin were not used"
        return Check(
            "fail",
            measured,
            "IB or the fabric's plugin",
            "",
            f"NCCL fell back to sockets ({why}) though this node has {', '.join(rdma)}",
            "NCCL cannot reach the fabric: on EFA, put aws-ofi-nccl's lib folder on LD_LIBRARY_PATH (or set "
            "NCCL_NET_PLUGIN) with FI_PROVIDER=efa; on InfiniBand or RoCE, check NCCL_IB_HCA and the image's "
            f"rdma-core libraries (ibv_devinfo); or {drain}",
        )
    detail = "no RDMA device on this node: sockets are its only network" if not rdma else f"RDMA: {', '.join(rdma)}"
    return Check("pass", measured, "IB or the fabric's plugin" if rdma else "any", "", detail)


# Run in a child process: loading a plugin runs its constructors (libfabric's among them), which the
# launcher has no business running. Prints the loaded file's path, read from the process' own maps.
_LOAD = (
    "import ctypes, sys\n"
    "ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)\n"
    "base = sys.argv[1].rsplit('/', 1)[-1]\n"
    "paths = {l.split()[-1] for l in open('/proc/self/maps') if l.rstrip().endswith('/' + base)}\n"
    "print(sorted(paths)[0] if paths else sys.argv[1])\n"
)


def loaded_path(name: str) -> str | None:
    """Where ``dlopen(name)`` finds a library with this process' library path, or None."""
    try:
        out = subprocess.run([sys.executable, "-c", _LOAD, name], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def plugin_candidates(env: Mapping[str, str]) -> list[str]:
    """The libraries NCCL tries, in order, as its network plugin (NVIDIA/nccl src/plugin/net.cc, 2.19 to
    2.27): ``NCCL_NET_PLUGIN`` as given, then ``libnccl-net-<NCCL_NET_PLUGIN>.so``; unset, ``libnccl-net.so``.
    aws-ofi-nccl installs ``libnccl-net.so``; newer EFA installers ship ``libnccl-net-ofi.so`` only, which
    NCCL loads with ``NCCL_NET_PLUGIN=ofi``."""
    name = env.get("NCCL_NET_PLUGIN", "")
    return [name, f"libnccl-net-{name}.so"] if name else ["libnccl-net.so"]


def expected_network(env: Mapping[str, str], rdma: list[str], find: Callable[[str], str | None] = loaded_path) -> str:
    """The network NCCL will use on this node, judged before it starts as NCCL judges: the first plugin that
    loads (`plugin_candidates`, with this process' library path), else its internal IB transport where
    RDMA devices are and ``NCCL_IB_DISABLE`` is not 1, else sockets. What it used is in its INIT lines
    (`read_nccl_debug`; the preflight's ``nccl_network`` check)."""
    names = plugin_candidates(env)
    for name in names:
        if path := find(name):
            return f"plugin {name} ({path})"
    tried = " or ".join(names)
    if rdma and env.get("NCCL_IB_DISABLE", "0") != "1":
        return f"internal IB on {', '.join(rdma)} (no plugin: {tried} not found)"
    why = "NCCL_IB_DISABLE=1" if rdma else "no RDMA device"
    return f"sockets (no plugin: {tried} not found; {why})"
