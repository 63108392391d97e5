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


# Run in a child process with the ranks' environment: loading a plugin runs its constructors (libfabric's
# among them), which the launcher has no business running. Prints where the loader found the library
# (dlinfo's link map: the path it opened, symlinks kept), or dlerror's message on stderr.
_LOAD = """
import ctypes, sys
try:
    lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
except OSError as err:
    sys.exit(str(err))
class LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]
found = ctypes.POINTER(LinkMap)()
ctypes.CDLL(None).dlinfo(ctypes.c_void_p(lib._handle), 2, ctypes.byref(found))  # RTLD_DI_LINKMAP
print((found.contents.l_name or sys.argv[1].encode()).decode())
"""


@dataclass(frozen=True)
class Loaded:
    """What ``dlopen(name)`` did: the path it opened, or why it failed (``missing``: no such file)."""

    path: str | None
    error: str | None = None

    @property
    def missing(self) -> bool:
        return self.path is None and (self.error is None or "No such file" in self.error)


def load_library(name: str, env: Mapping[str, str]) -> Loaded:
    """``dlopen(name)`` with ``env``'s library path, in a child process."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _LOAD, name], env=dict(env), capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Loaded(None, str(err))
    if out.returncode == 0 and out.stdout.strip():
        return Loaded(out.stdout.strip())
    return Loaded(None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else None)


def plugin_candidates(env: Mapping[str, str]) -> list[str]:
    """The libraries NCCL 2.23 to 2.26 (torch 2.7.0 loads 2.26.2) tries, in order, as its network plugin
    (NVIDIA/nccl src/plugin/plugin_open.cc): ``NCCL_NET_PLUGIN`` as given, then, unless it is a path or a
    ``lib*.so`` name, ``libnccl-net-<NCCL_NET_PLUGIN>.so``; unset or empty, ``libnccl-net.so``.
    aws-ofi-nccl installs ``libnccl-net.so``; newer EFA installers ship ``libnccl-net-ofi.so`` only, which
    NCCL loads with ``NCCL_NET_PLUGIN=ofi``. (NCCL 2.27 takes a comma-separated list; 2.19-2.20 only
    the ``libnccl-net-<name>.so`` form.)"""
    name = env.get("NCCL_NET_PLUGIN", "")
    if not name:
        return ["libnccl-net.so"]
    if "/" in name or (name.startswith("lib") and name.endswith(".so")):
        return [name]
    return [name, f"libnccl-net-{name}.so"]


def ib_devices(folder: Path = INFINIBAND) -> list[str]:
    """The RDMA devices NCCL's own IB transport can use: an ACTIVE port whose link layer is InfiniBand or
    Ethernet (RoCE), as ``ncclIbInit`` keeps them (src/transport/net_ib.cc). EFA devices (``rdmap*``, link
    layer unspecified) are not among them: NCCL reaches EFA only through the aws-ofi-nccl plugin."""
    usable = []
    for device in rdma_devices(folder):
        for port in sorted((folder / device / "ports").glob("*")):
            state = _read(port / "state")
            layer = _read(port / "link_layer")
            if "ACTIVE" in state and layer in ("InfiniBand", "Ethernet"):
                usable.append(f"{device}:{port.name}")
    return usable


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def expected_network(
    env: Mapping[str, str],
    folder: Path = INFINIBAND,
    load: Callable[[str, Mapping[str, str]], Loaded] = load_library,
) -> str:
    """The order in which NCCL will look for its network on this node, judged before it starts with the
    ranks' environment: the first plugin that loads (`plugin_candidates`), then its own IB transport on the
    usable ports (`ib_devices`, unless ``NCCL_IB_DISABLE``), then sockets. NCCL takes the first that finds a
    device (a plugin that loads can still find none); ``NCCL_NET`` forces one by name. What NCCL used is in
    its INIT lines (`read_nccl_debug`; the preflight's ``nccl_network`` check)."""
    steps: list[str] = []
    notes: list[str] = []
    for name in plugin_candidates(env):
        loaded = load(name, env)
        if loaded.path:
            steps.append(f"plugin {name} ({loaded.path})")
            notes = []  # the names tried before it do not matter
            break
        notes.append(f"{name} not found" if loaded.missing else f"{name} failed to load: {loaded.error}")
    try:
        ib_disabled = int(env.get("NCCL_IB_DISABLE") or 0) != 0
    except ValueError:
        ib_disabled = False
    ports = ib_devices(folder)
    if ports and not ib_disabled:
        steps.append(f"IB on {', '.join(ports)}")
    elif ports:
        notes.append("NCCL_IB_DISABLE set")
    elif rdma_devices(folder):
        notes.append(f"no IB or RoCE port ({', '.join(rdma_devices(folder))}: EFA needs the plugin)")
    steps.append("sockets")
    text = ", else ".join(steps)
    if env.get("NCCL_NET"):
        text = f"NCCL_NET={env['NCCL_NET']} forces one of: {text}"
    return text + (f" ({'; '.join(notes)})" if notes else "")
