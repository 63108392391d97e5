"""Both sbatch scripts on a real 2-node Slurm cluster started by the test (see tests/local_slurm.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_case.log_parser import parse_log_file
from test_case.metrics import LOSS_KEY
from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster, _processes_named, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm cluster needs root (slurmd, munged, unshare); CI runs as root")
    c = LocalSlurmCluster(workdir=tmp_path_factory.mktemp("slurm"), nodes=2).start()
    pids = dict(c._pids())
    yield c
    c.stop()
    assert not any(pid_alive(p) for p in pids.values()), "a daemon outlived stop()"
    assert not _processes_named("slurmstepd")


def test_cluster_start_is_idempotent(cluster: LocalSlurmCluster) -> None:
    before = cluster._pids()
    assert cluster.start()._pids() == before and cluster.running()


def _job_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], **{k: v for k, v in extra.items()}}


def test_preprocess_then_train_on_two_nodes(
    cluster: LocalSlurmCluster, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    from streaming import StreamingDataset

    sample, tokenizer = demo_assets
    logs, data, ckpt = tmp_path / "logs", tmp_path / "data", tmp_path / "ckpt"
    logs.mkdir()
    output = f"--output={logs}/%x_%j.out"

    prep = cluster.sbatch(
        [output, "slurm-scripts/1.c4-preprocess.sbatch"],
        cwd=REPO_ROOT,
        env=_job_env(
            C4_INPUT=str(sample), DATA_ROOT=str(data), TOKENIZER=str(tokenizer), CONCAT_TOKENS="128", WORKERS="1"
        ),
    )
    info = cluster.wait(prep, timeout=300)
    prep_log = (logs / f"c4-preprocess_{prep}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), prep_log[-3000:]
    for split in ("train_small", "val_small"):
        summary = json.loads((data / split / "summary.json").read_text())
        ds = StreamingDataset(local=str(data), split=split, shuffle=False, batch_size=1)
        assert len(ds) == summary["samples"] > 100 and ds[0]["tokens"].shape == (128,)

    train = cluster.sbatch(
        [output, "--nodes=2", "slurm-scripts/2.train-mpt-manual-distributed.sbatch", "mpt-tiny-cpu"],
        cwd=REPO_ROOT,
        env=_job_env(DATA_ROOT=str(data), TOKENIZER=str(tokenizer), SAVE_ROOT=str(ckpt)),
    )
    info = cluster.wait(train, timeout=600)
    log_path = logs / f"mpt-train_{train}.out"
    text = log_path.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert info["NodeList"] == "node[1-2]"
    # Both nodes launched and joined one process group: node 1's rank logged from node2.
    assert "0: launch: node 0/2 on node1: composer --nproc 1 --world_size 2 --node_rank 0 --master_addr node1" in text
    assert "1: launch: node 1/2 on node2: composer --nproc 1 --world_size 2 --node_rank 1 --master_addr node1" in text
    assert "1: " in text and "rank1[" in text

    parsed = parse_log_file(log_path)
    assert parsed.header["world_size"] == "2" and parsed.header["nodelist"] == "node[1-2]"
    assert parsed.header["job_id"] == train
    losses = [b.metrics[LOSS_KEY] for b in parsed.train_blocks]
    assert len(losses) == 40 and all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert parsed.train_blocks[-1].step == parsed.train_blocks[-1].total == 40
    assert (ckpt / f"mpt-train-{train}" / "checkpoints" / "ep0-ba40-rank0.pt").is_file()

    report = subprocess.run(
        [sys.executable, "report.py", str(logs), "--out", str(tmp_path / "report")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    (run,) = json.loads((tmp_path / "report" / "report.json").read_text())["runs"]
    assert (run["job_id"], run["world_size"], run["last_batch"], run["max_duration"]) == (train, 2, 40, 40)
    assert run["tokens_per_sec"] > 0 and run["tokens_per_sec_per_device"] == pytest.approx(run["tokens_per_sec"] / 2)
    assert run["final_train_loss"] == losses[-1]
