"""The nccl-tests reader (test_case/preflight/nccl_tests.py) on real published outputs: every
``nccl-tests_*`` file of ../shared/gpu-outputs (sources in its INDEX.md: NVIDIA dgxc-benchmarking,
awsome-distributed-training, Oracle's oci-hpc-oke, GCP cluster-toolkit, microsoft/superbenchmark),
and what it says about output that is not a table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_case.preflight.nccl_tests import NcclTestsError, NcclTestsRun, main, read_nccl_tests
from tests.conftest import REPO_ROOT

OUTPUTS = REPO_ROOT.parent / "shared" / "gpu-outputs"


def read(name: str) -> NcclTestsRun:
    return read_nccl_tests((OUTPUTS / name).read_text(), name)


def test_every_recorded_output_reads_to_its_rows_and_trailer() -> None:
    files = sorted(OUTPUTS.glob("nccl-tests_*"))
    assert len(files) == 7
    for path in files:
        run = read(path.name)
        row = re.compile(r"^(\[1,0\]<stdout>:)?\s*\d+\s+\d+\s+float\s")  # size, count, type
        rows = [line for line in path.read_text().splitlines() if row.match(line)]
        assert len(run.results) == len(rows), path.name  # every result row, nothing else
        assert run.out_of_bounds == 0 and run.wrong == 0


def test_a_single_h100_node_the_newest_header() -> None:
    run = read("nccl-tests_all_reduce_perf_h100x8_single-node.txt")
    assert [(d.rank, d.host, d.device, d.bus_id) for d in run.devices][:2] == [
        (0, "pool0-01806", 0, "0000:19:00"),
        (1, "pool0-01806", 1, "0000:2d:00"),
    ]
    assert {d.name for d in run.devices} == {"NVIDIA H100 80GB HBM3"} and run.hosts == ["pool0-01806"]
    assert run.settings["nGpus"] == "1" and run.settings["maxBytes"] == "17179869184"
    assert run.settings["warmup iters"] == "5" and run.settings["side_work"] == "0"
    top = run.largest
    assert (top.size_bytes, top.count, top.dtype, top.redop, top.root) == (17179869184, 4294967296, "float", "sum", -1)
    assert (top.out_of_place.time_us, top.out_of_place.algbw_gbs, top.out_of_place.busbw_gbs) == (62648, 274.23, 479.90)
    assert top.in_place.busbw_gbs == 479.99 and run.peak_busbw_gbs == 480.16  # the peak is at 8 GiB
    assert run.avg_busbw_gbs == 159.151 and run.results[0].size_bytes == 8


def test_two_nodes_and_the_version_lines() -> None:
    gcp = read("nccl-tests_all_reduce_perf_h100_2node-16rank_gcp-a3mega.txt")
    assert gcp.hosts == ["ztan-mig-235z", "ztan-mig-gq73"] and len(gcp.devices) == 16
    assert gcp.largest.out_of_place.busbw_gbs == 338.82 and gcp.avg_busbw_gbs == 70.742
    oci = read("nccl-tests_all_reduce_perf_a100_2node-16rank_oci-roce_v2.17.9.txt")
    assert (oci.test, oci.version, oci.nccl_version) == ("all_reduce_perf", "2.17.9", "2.29.3+cuda13.1")
    assert [d.rank for d in oci.devices] == [0, 7, 8, 15]  # the published list is condensed
    assert oci.avg_busbw_gbs is None and oci.largest.out_of_place.busbw_gbs == 189.60


def test_launcher_prefixes_nccl_log_lines_and_unchecked_rows() -> None:
    efa = read("nccl-tests_all_reduce_perf_2x-p5_efa_eks_fragment.txt")  # every line "[1,0]<stdout>:"
    assert efa.results[0].size_bytes == 0 and efa.largest.size_bytes == 2147483648
    assert efa.largest.out_of_place.busbw_gbs == 437.79 and efa.avg_busbw_gbs == 52.9753
    gather = read("nccl-tests_all_gather_perf_h100_2node_gke-a3high-tcpx_fragment.txt")  # a NCCL INFO line first
    assert {(r.redop, r.root, r.out_of_place.wrong) for r in gather.results} == {("none", -1, None)}
    labelled = "\n".join(
        f"0: {line}"
        for line in (OUTPUTS / "nccl-tests_all_reduce_perf_h100x8_single-node.txt").read_text().splitlines()
    )
    assert read_nccl_tests(labelled).largest.in_place.busbw_gbs == 479.99  # srun --label


def test_the_old_format_without_root_and_with_a_blank_redop() -> None:
    reduce = read("nccl-tests_all_reduce_perf_a100x8_old-format.txt")
    assert {(r.redop, r.root) for r in reduce.results} == {("sum", None)}
    assert reduce.largest.out_of_place.time_us == 63896 and reduce.largest.out_of_place.wrong is None
    assert [d.name for d in reduce.devices] == ["A100-SXM4-40GB"] * 8 and reduce.avg_busbw_gbs == 68.4048
    alltoall = read("nccl-tests_alltoall_perf_a100x8_old-format.txt")
    assert {r.redop for r in alltoall.results} == {None}
    assert alltoall.largest.out_of_place.busbw_gbs == 224.31 and alltoall.largest.in_place.busbw_gbs == 226.16


def test_what_is_not_a_table_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NcclTestsError, match=r"x.txt: no results table .* is it nccl-tests output"):
        read_nccl_tests("NCCL INFO Bootstrap : Using eth0\n", "x.txt")
    text = (OUTPUTS / "nccl-tests_all_reduce_perf_h100x8_single-node.txt").read_text().splitlines()
    cut = next(i for i, line in enumerate(text) if line.lstrip().startswith("1048576 "))
    text[cut] = " ".join(text[cut].split()[:9])  # a row cut short (the job killed while printing)
    with pytest.raises(
        NcclTestsError, match=rf"y.txt, line {cut + 1}: not a result row .*9 values where the header names 13"
    ):
        read_nccl_tests("\n".join(text), "y.txt")
    header_only = "\n".join(text[: next(i for i, ln in enumerate(text) if "(B)" in ln) + 1])
    with pytest.raises(NcclTestsError, match="a results table with no rows"):
        read_nccl_tests(header_only, "z.txt")

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main([str(OUTPUTS / "nccl-tests_all_reduce_perf_h100_2node-16rank_gcp-a3mega.txt"), str(empty)]) == 1
    out, err = capsys.readouterr()
    assert "16 rank(s) listed on ztan-mig-235z (8), ztan-mig-gq73 (8)" in out
    assert "largest size 8589934592 B: busbw 338.82 GB/s out of place, 337.35 GB/s in place" in out
    assert f"nccl_tests: error: {empty}: no results table" in err
