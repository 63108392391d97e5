"""Which network NCCL used (test_case/preflight/nccl_network.py), read from real published
``NCCL_DEBUG=INFO`` output: every ``nccl-debug-info_*`` file of ../shared/gpu-outputs (sources in its
INDEX.md: aws-ofi-nccl on EFA from daekeun-ml/distributed-training-on-aws and awsome-distributed-training,
a DGX H100 on RoCE from NVIDIA/nccl-tests#185, a fallback to sockets from NVIDIA/nccl#1267), and the
preflight check that fails the fallback on a node with RDMA devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_case.preflight.nccl_network import NcclNetwork, network_check, rdma_devices, read_nccl_debug
from tests.conftest import REPO_ROOT

OUTPUTS = REPO_ROOT.parent / "shared" / "gpu-outputs"
DRAIN = "drain it"


def read(name: str) -> dict[str, NcclNetwork]:
    return read_nccl_debug((OUTPUTS / name).read_text().splitlines())


def test_aws_ofi_nccl_on_efa_two_nodes() -> None:
    hosts = read("nccl-debug-info_aws-ofi-nccl_efa_2node_a10g.log")
    assert sorted(hosts) == ["compute-gpu-st-distributed-ml-1", "compute-gpu-st-distributed-ml-2"]
    one = hosts["compute-gpu-st-distributed-ml-1"]
    assert (one.network, one.plugin, one.provider, one.version) == (
        "AWS Libfabric",
        "aws-ofi-nccl 1.12.1-aws",
        "efa",
        "2.23.4+cuda12.4",
    )
    assert one.describe() == "AWS Libfabric (aws-ofi-nccl 1.12.1-aws, provider efa), NCCL 2.23.4+cuda12.4"
    check = network_check(one, 2, ["rdmap16s27"], DRAIN)
    assert check.status == "pass" and check.detail == "RDMA: rdmap16s27"


def test_a_p5_fragment_with_srun_labels_names_the_plugin() -> None:
    hosts = read("nccl-debug-info_p5_aws-ofi-nccl_fragment.log")
    assert hosts["p5-dy-gpu-3"].version == "2.26.2+cuda12.2"
    assert hosts["p5-dy-gpu-4"].plugin == "aws-ofi-nccl 1.13.2-aws"
    # the fragment stops before "Using network": nothing to judge, said as such
    assert network_check(hosts["p5-dy-gpu-4"], 2, ["rdmap0"], DRAIN).status == "skip"


def test_infiniband_on_roce_with_no_plugin() -> None:
    hosts = read("nccl-debug-info_ib-roce_dgxh100_fragment.log")
    four, three = hosts["dgxh100-4"], hosts["dgxh100-3"]
    assert (four.network, four.plugin, four.devices) == ("IB", "internal", "mlx5_10:1/RoCE mlx5_11:1/RoCE [RO]")
    assert four.version == "2.19.3+cuda12.3"  # its "NCCL version" line carries no host prefix
    assert (three.network, three.plugin) == ("IB", "internal")
    assert network_check(three, 2, ["mlx5_10", "mlx5_11"], DRAIN).status == "pass"


def test_a_fallback_to_sockets_beside_an_rdma_device_fails_the_node() -> None:
    (host,) = read("nccl-debug-info_socket-fallback_fragment.log").values()
    assert (host.host, host.network, host.devices) == ("instance-8g-96c-3", "Socket", "ens7:10.128.0.32<0>")
    assert host.notes == ["NET/IB : No device found."]
    failed = network_check(host, 2, ["mlx5_0"], DRAIN)
    assert failed.status == "fail" and failed.measured == "Socket, NCCL 2.19.3+cuda12.3"
    assert failed.detail == "NCCL fell back to sockets (NET/IB : No device found.) though this node has mlx5_0"
    assert "aws-ofi-nccl's lib folder on LD_LIBRARY_PATH" in failed.action and failed.action.endswith("or drain it")
    # the same lines on a node with no RDMA device, or in a one-node job: sockets are all there is
    assert network_check(host, 2, [], DRAIN).status == "pass"
    assert network_check(host, 1, ["mlx5_0"], DRAIN).status == "pass"


def test_no_lines_and_the_rdma_folder(tmp_path: Path) -> None:
    assert read_nccl_debug(["INFO: nothing of NCCL's"]) == {}
    assert network_check(None, 2, ["mlx5_0"], DRAIN).status == "skip"
    (tmp_path / "mlx5_1").mkdir()
    (tmp_path / "mlx5_0").mkdir()
    assert rdma_devices(tmp_path) == ["mlx5_0", "mlx5_1"] and rdma_devices(tmp_path / "none") == []


def sysfs_devices(root: Path, ports: dict[str, tuple[str, str]]) -> Path:
    """A /sys/class/infiniband of ``device -> (port 1 state, link layer)``."""
    for device, (state, layer) in ports.items():
        port = root / device / "ports" / "1"
        port.mkdir(parents=True)
        (port / "state").write_text(state + "\n")
        (port / "link_layer").write_text(layer + "\n")
    return root


def test_the_network_nccl_looks_for_is_the_plugin_that_loads_then_ib_then_sockets(tmp_path: Path) -> None:
    """Real dlopen of real shared objects, found on LD_LIBRARY_PATH as NCCL's dlopen finds them (a symlink
    named by its own path), and real sysfs-shaped device folders: the run header's ``nccl_network``."""
    src = tmp_path / "plugin.c"
    src.write_text("int ncclNetPlugin_v8 = 0;\n")
    libs = tmp_path / "lib"
    libs.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libs / "libnccl-net-ofi.so"), str(src)], check=True)
    (libs / "libnccl-net.so").symlink_to("libnccl-net-ofi.so")
    (libs / "libnccl-net-broken.so").write_text("not an ELF file\n")
    ib = sysfs_devices(tmp_path / "ib", {"mlx5_0": ("4: ACTIVE", "InfiniBand"), "mlx5_1": ("1: DOWN", "InfiniBand")})
    efa = sysfs_devices(tmp_path / "efa", {"rdmap0s31": ("4: ACTIVE", "Unspecified")})
    none = tmp_path / "none"
    code = (
        "import os, sys; from pathlib import Path; from test_case.preflight.nccl_network import expected_network; "
        "print(expected_network(os.environ, Path(sys.argv[1])))"
    )

    def expected(env: dict[str, str], devices: Path) -> str:
        full = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), **env}
        out = subprocess.run(
            [sys.executable, "-c", code, str(devices)], env=full, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    on_path = {"LD_LIBRARY_PATH": str(libs)}
    assert (
        expected(on_path, ib) == f"plugin libnccl-net.so ({libs / 'libnccl-net.so'}), else IB on mlx5_0:1, else sockets"
    )
    ofi = expected({**on_path, "NCCL_NET_PLUGIN": "ofi"}, efa)
    assert ofi == (
        f"plugin libnccl-net-ofi.so ({libs / 'libnccl-net-ofi.so'}), else sockets "
        "(no IB or RoCE port (rdmap0s31: EFA needs the plugin))"
    )
    by_path = expected({"NCCL_NET_PLUGIN": str(libs / "libnccl-net.so")}, none)
    assert by_path == f"plugin {libs / 'libnccl-net.so'} ({libs / 'libnccl-net.so'}), else sockets"
    # the plugin's folder missing from the library path: NCCL's own IB transport, or sockets (EFA: sockets)
    absent = {"NCCL_NET_PLUGIN": "mpt-suite-absent"}
    assert expected(absent, ib) == (
        "IB on mlx5_0:1, else sockets (mpt-suite-absent not found; libnccl-net-mpt-suite-absent.so not found)"
    )
    assert expected(absent, efa).startswith("sockets (mpt-suite-absent not found; ")
    assert expected(absent, efa).endswith("; no IB or RoCE port (rdmap0s31: EFA needs the plugin))")
    assert expected({**absent, "NCCL_IB_DISABLE": "2"}, ib).endswith("; NCCL_IB_DISABLE set)")
    broken = expected({**on_path, "NCCL_NET_PLUGIN": "broken"}, none)
    assert broken.startswith("sockets (broken not found; libnccl-net-broken.so failed to load: ")
    forced = expected({**absent, "NCCL_NET": "Socket"}, ib)
    assert forced.startswith("NCCL_NET=Socket forces one of: IB on mlx5_0:1, else sockets")
