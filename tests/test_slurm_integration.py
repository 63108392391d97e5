"""Both sbatch scripts on a real 2-node Slurm cluster started by the test (see tests/local_slurm.py).

Preprocessing runs once; the tiny MPT then trains on both nodes twice with the same config:
uninterrupted (alone on the cluster: its rank timing names no straggler), and interrupted twice
(requeued with ``scontrol requeue`` after its first checkpoint, then, after a checkpoint of its
second start, sent the time-limit warning (USR1) that makes the script requeue itself), on
partition ``spare`` while the other tests run on ``debug``. Each start must resume from its
checkpoint and the run must end exactly where the uninterrupted run ends. A killed rank, a job stopped
by its check step and a typo make the failed and never-started runs the report must show; a second
preprocessing job into a folder that one is writing, submitted from another directory, is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from preprocessing.writer_lock import LOCK
from test_case.report.log_lines import ParsedLog
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import LOSS_KEY, summarise_run
from test_case.report.stragglers import STRAGGLER_RATIO
from test_case.timing_events import RankTimes
from test_case.training.node_plan import expand_hostlist
from tests.conftest import REPO_ROOT, decompress_shards
from tests.local_slurm import LocalSlurmCluster, rank_pid

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TRAIN = "slurm-scripts/2.train-mpt-manual-distributed.sbatch"
OVERRIDES = ["max_duration=60ba", "save_interval=10ba"]


def test_expand_hostlist_agrees_with_scontrol(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """The launcher's hostlist expansion against Slurm's own (installed by the cluster fixture)."""
    conf = tmp_path / "slurm.conf"  # scontrol needs a configuration even to expand a hostlist
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=n1\n")
    for hostlist in ("node[1-3,7]", "x[008-011]", "rack[1-2]-n[1-2]", "a1,b[2-3],c", "ip-10-1-2-[9-11]"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", hostlist],
            capture_output=True,
            text=True,
            check=True,
            env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"},
        )
        assert expand_hostlist(hostlist) == out.stdout.split()


@dataclass
class Workspace:
    logs: Path
    data: Path
    ckpt: Path
    tokenizer: Path
    preprocess_log: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "DATA_ROOT": str(self.data),
            "TOKENIZER": str(self.tokenizer),
            "SAVE_ROOT": str(self.ckpt),
            **extra,
        }


@pytest.fixture(scope="module")
def workspace(
    cluster: LocalSlurmCluster, demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Workspace:
    """The preprocessing job's output (asserted in test_preprocessing_job)."""
    root = tmp_path_factory.mktemp("work")
    ws = Workspace(root / "logs", root / "data", root / "ckpt", demo_assets[1])
    ws.logs.mkdir()
    job = cluster.sbatch(
        [f"--output={ws.logs}/%x_%j.out", "--nodes=2", "slurm-scripts/1.c4-preprocess.sbatch"],
        cwd=REPO_ROOT,
        env=ws.env(C4_INPUT=str(demo_assets[0]), CONCAT_TOKENS="128", WORKERS="1"),
    )
    info = cluster.wait(job, timeout=300)
    log = (ws.logs / f"c4-preprocess_{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    ws.preprocess_log = log
    return ws


@dataclass
class TrainRun:
    job_id: str
    info: dict[str, str]
    log: Path
    text: str
    parsed: ParsedLog


def submit_training(cluster: LocalSlurmCluster, ws: Workspace, partition: str = "debug", **env: str) -> str:
    args = [f"--output={ws.logs}/%x_%j.out", f"--partition={partition}", "--nodes=2", TRAIN, "mpt-tiny-cpu"]
    return cluster.sbatch([*args, *OVERRIDES], cwd=REPO_ROOT, env=ws.env(**env))


def finish(cluster: LocalSlurmCluster, ws: Workspace, job: str) -> TrainRun:
    info = cluster.wait(job, timeout=600)
    log = ws.logs / f"mpt-train_{job}.out"
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    return TrainRun(job, info, log, text, parse_log_file(log))


def wait_for_checkpoint(ws: Workspace, job: str, timeout: float = 300, after: int = 0) -> Path:
    """The first checkpoint Composer finished saving after batch ``after``: the one ``latest-rank0.pt``
    points to.

    The job is then interrupted at once, often while the next checkpoint is being written: the
    restart must cope with that (test_case.training.checkpoints; tests/test_checkpoints.py makes each case).
    """
    folder = ws.ckpt / f"mpt-train-{job}" / "checkpoints"
    latest = folder / "latest-rank0.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest.is_symlink() and checkpoint_batch(path := folder / os.readlink(latest)) > after:
            return path
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint after batch {after} in {folder} after {timeout} s")


@pytest.fixture(scope="module")
def uninterrupted(cluster: LocalSlurmCluster, workspace: Workspace) -> TrainRun:
    return finish(cluster, workspace, submit_training(cluster, workspace))


def test_preprocessing_job_shares_the_work_between_two_nodes(workspace: Workspace) -> None:
    from streaming import StreamingDataset

    log = workspace.preprocess_log
    for task in (0, 1):  # both nodes' tasks converted a part of each split; the last one merged
        assert (
            f"{task}: preprocessing: 2 file(s) -> {workspace.data}/train_small: task {task} of 2, 1 part(s) of 2" in log
        )
    # a task that finds every part complete merges (atomically): one or both tasks, per split
    assert all(f"{split}/index.json (shards read back): 2 parts" in log for split in ("train_small", "val_small"))
    for split in ("train_small", "val_small"):
        summary = json.loads((workspace.data / split / "summary.json").read_text())
        assert summary["parts"] == 2
        ds = StreamingDataset(local=str(workspace.data), split=split, shuffle=False, batch_size=1)
        assert len(ds) == summary["samples"] > 100 and ds[0]["tokens"].shape == (128,)


def test_training_on_two_nodes(uninterrupted: TrainRun, workspace: Workspace) -> None:
    run, text = uninterrupted, uninterrupted.text
    assert run.info["NodeList"] == "node[1-2]" and run.info["Restarts"] == "0"
    # Both nodes launched and joined one process group: node 1's rank logged from node2.
    assert "0: launch: node 0/2 on node1: composer --nproc 1 --world_size 2 --node_rank 0 --master_addr node1" in text
    assert "1: launch: node 1/2 on node2: composer --nproc 1 --world_size 2 --node_rank 1 --master_addr node1" in text
    assert "1: " in text and "rank1[" in text
    header = run.parsed.header
    assert (header.world_size, header.nodelist, header.job_id) == (2, "node[1-2]", run.job_id)
    losses = [b.metrics[LOSS_KEY] for b in run.parsed.train_blocks]
    assert len(losses) == 60 and all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert run.parsed.train_blocks[-1].step == run.parsed.train_blocks[-1].total == 60
    assert (workspace.ckpt / f"mpt-train-{run.job_id}" / "checkpoints" / "ep0-ba60-rank0.pt").is_file()
    lines = text.splitlines()
    assert re.fullmatch(rf"\[\S+\] job {run.job_id} start 0 on node\[1-2\]", lines[0]), lines[0]
    assert re.fullmatch(rf"\[\S+\] job {run.job_id} end: exit code 0 after \d+ s", lines[-1]), lines[-1]


def test_a_healthy_two_node_run_names_no_straggler(uninterrupted: TrainRun) -> None:
    """Rank timing (`test_case.training.rank_timing`) of a run alone on the cluster: no node named."""
    summary = summarise_run(uninterrupted.parsed)
    print(f"healthy 2-node run: per-node compute (threshold {STRAGGLER_RATIO}x the median rank):")
    for n in summary.node_compute:
        print(f"  {n.node}: {n.median_compute_s:.4f} s/batch, {n.ratio_to_median:.2f}x, straggler={n.straggler}")
    assert [n.node for n in summary.node_compute] in (["node1", "node2"], ["node2", "node1"])
    assert summary.stragglers == []
    assert all(n.median_compute_s > 0 and not n.straggler for n in summary.node_compute)
    windows = [e for _, e in uninterrupted.parsed.timing_events if isinstance(e, RankTimes)]
    assert [w.batch for w in windows] == [20, 40, 60]  # every 20 batches, both ranks
    assert all(len(w.compute_s) == 2 for w in windows)


def test_report_reads_the_two_node_log(uninterrupted: TrainRun, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "report.py", str(uninterrupted.log), "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert (run["job_id"], run["world_size"], run["last_batch"], run["max_duration"]) == (
        uninterrupted.job_id,
        2,
        60,
        60,
    )
    assert run["tokens_per_sec"] > 0 and run["tokens_per_sec_per_device"] == pytest.approx(run["tokens_per_sec"] / 2)
    assert run["final_train_loss"] == uninterrupted.parsed.train_blocks[-1].metrics[LOSS_KEY]


def parse_log_file_text(text: str) -> ParsedLog:
    from test_case.report.log_lines import parse_composer_log

    return parse_composer_log(text.splitlines())


def checkpoint_batch(path: Path) -> int:
    """``ep0-ba10-rank0.pt`` -> 10."""
    return int(path.name.split("-ba")[1].split("-")[0])


def wait_for_batch(log: Path, batch: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and f"0: [batch={batch}/" in log.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"{log} did not reach batch {batch} in {timeout} s")


@pytest.fixture(scope="module")
def killed_rank(cluster: LocalSlurmCluster, workspace: Workspace) -> TrainRun:
    """A run whose rank on node2 is killed with SIGKILL while it trains (what an Xid or OOM kill does),
    with no restarts allowed (MAX_RESTARTS=0): it stays failed (tests/test_fault_tolerance_slurm.py
    has the requeue)."""
    job = submit_training(cluster, workspace, MAX_RESTARTS="0")
    log = workspace.logs / f"mpt-train_{job}.out"
    wait_for_batch(log, 5)
    os.kill(rank_pid(job, rank=1), signal.SIGKILL)
    info = cluster.wait(job, timeout=300)
    return TrainRun(job, info, log, log.read_text(), parse_log_file(log))


@pytest.fixture(scope="module")
def never_started(cluster: LocalSlurmCluster, workspace: Workspace) -> tuple[str, dict[str, str]]:
    """A job stopped before any node starts: its dataset is not there (the batch script's check step)."""
    args = [f"--output={workspace.logs}/%x_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", *OVERRIDES]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env(DATA_ROOT=str(workspace.data / "missing")))
    return job, cluster.wait(job, timeout=300)


@pytest.fixture(scope="module")
def mistyped(cluster: LocalSlurmCluster, workspace: Workspace) -> TrainRun:
    """A job with a typo in an override: stopped by the batch script's check step, before any node starts."""
    args = [f"--output={workspace.logs}/%x_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", "max_durtion=60ba"]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env())
    info = cluster.wait(job, timeout=300)
    log = workspace.logs / f"mpt-train_{job}.out"
    return TrainRun(job, info, log, log.read_text(), parse_log_file(log))


@pytest.fixture(scope="module")
def cancelled(cluster: LocalSlurmCluster, workspace: Workspace) -> TrainRun:
    """A run stopped with scancel while it trains."""
    job = submit_training(cluster, workspace)
    log = workspace.logs / f"mpt-train_{job}.out"
    wait_for_batch(log, 3)
    subprocess.run(["scancel", job], env=cluster.env, check=True, capture_output=True)
    info = cluster.wait(job, timeout=300)
    return TrainRun(job, info, log, log.read_text(), parse_log_file(log))


def test_a_cancelled_job_is_reported_cancelled_and_its_end_line_is_the_last(cancelled: TrainRun) -> None:
    """Before: reported "failed", and the ranks' tracebacks followed the end line."""
    assert cancelled.info["JobState"] == "CANCELLED"
    lines = cancelled.text.splitlines()
    (end,) = [i for i, x in enumerate(lines) if re.search(rf"\] job {cancelled.job_id} end: ", x)]
    assert re.fullmatch(
        rf"\[\S+\] job {cancelled.job_id} end: exit code 143 \(stopped by SIGTERM\) after \d+ s", lines[end]
    )
    # the ranks' last lines come before it; only srun's own last words may follow, within Slurm's KillWait
    assert all(x.startswith("srun: ") for x in lines[end + 1 :]), lines[end:]
    assert any("exited with code 143" in x for x in lines[:end])
    run = summarise_run(cancelled.parsed)
    assert run.status == "cancelled" and run.last_batch is not None and run.last_batch < 60
    assert re.search(rf"\*\*\* JOB {cancelled.job_id} ON node1 CANCELLED AT \S+ \*\*\*$", run.failure or ""), run
    assert run.warnings[0].startswith(f"CANCELLED at batch {run.last_batch}/60 (scancel): ")


@pytest.fixture(scope="module")
def misconfigured(cluster: LocalSlurmCluster, workspace: Workspace) -> TrainRun:
    """A valid key with a value llm-foundry refuses on every rank while it builds the model, which
    launch check cannot know: d_model 128 on 3 heads."""
    args = [f"--output={workspace.logs}/%x_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", *OVERRIDES, "model.n_heads=3"]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env())
    info = cluster.wait(job, timeout=300)
    log = workspace.logs / f"mpt-train_{job}.out"
    return TrainRun(job, info, log, log.read_text(), parse_log_file(log))


def test_an_error_every_rank_raises_before_the_first_batch_is_not_retried(misconfigured: TrainRun) -> None:
    """Before: requeued MAX_RESTARTS times (2.5 minutes), then 'requeue it by hand', and exit code 143."""
    run = misconfigured
    assert (run.info["JobState"], run.info["ExitCode"], run.info["Restarts"]) == ("FAILED", "2:0", "0"), run.text[
        -3000:
    ]
    assert re.findall(rf"\] job {run.job_id} start (\d+) on", run.text) == ["0"]
    stop = (
        f"restarts: job {run.job_id} stops without a requeue: every rank raised the same error before the first "
        "batch, a configuration error that a requeue would repeat: ValueError: d_model must be divisible by n_heads"
    )
    assert stop in run.text and "requeueing" not in run.text and "scontrol requeue" not in run.text
    (event,) = [e for e in run.parsed.restart_events if e.kind == "failure"]
    assert (event.action, event.stop_reason, event.cause) == (
        "stop",
        "configuration",
        "ValueError: d_model must be divisible by n_heads",
    )
    assert re.fullmatch(
        rf"\[\S+\] job {run.job_id} end: exit code 2 \(training failed; its step exited with \d+\) after \d+ s",
        run.text.splitlines()[-1],
    ), run.text.splitlines()[-1]


def test_a_typo_in_an_override_stops_the_job_once_with_exit_code_2(mistyped: TrainRun) -> None:
    assert (mistyped.info["JobState"], mistyped.info["ExitCode"]) == ("FAILED", "2:0"), mistyped.text
    error = (
        "launch: error: mpt-tiny-cpu.yaml: llm-foundry has no config key 'max_durtion': did you mean 'max_duration'?"
    )
    assert mistyped.text.count(error) == 1 and "launch: node" not in mistyped.text and "Traceback" not in mistyped.text
    assert re.search(rf"\] job {mistyped.job_id} end: exit code 2 after \d+ s$", mistyped.text.rstrip())


def test_a_second_preprocessing_job_into_the_same_folder_stops_with_one_line(
    cluster: LocalSlurmCluster, workspace: Workspace, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """Job A holds the folder (its task is stopped with SIGSTOP so that it keeps holding it); job B,
    submitted from another directory with SUITE_ROOT, is refused naming job A; job C, submitted
    from there without SUITE_ROOT, stops with one line saying what to do. A then completes."""
    import gzip

    inputs = tmp_path / "c4"
    inputs.mkdir()
    for path in sorted(demo_assets[0].glob("c4-train.*.json.gz")):  # 6 times the sample: a few seconds of work
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.readlines()
        with gzip.open(inputs / path.name, "wt", encoding="utf-8") as fh:
            fh.writelines(lines * 6)
    data = tmp_path / "data"
    env = workspace.env(
        DATA_ROOT=str(data), C4_INPUT=str(inputs), CONCAT_TOKENS="128", WORKERS="1", SPLITS="train_small"
    )
    output = f"--output={workspace.logs}/%x_%j.out"
    script = str(REPO_ROOT / "slurm-scripts" / "1.c4-preprocess.sbatch")
    first = cluster.sbatch([output, "--job-name=prep-a", script], cwd=REPO_ROOT, env=env)
    lock = data / "train_small" / LOCK
    deadline = time.monotonic() + 180
    while not (lock.exists() and json.loads(lock.read_text())["job_id"] == first):
        assert time.monotonic() < deadline, "job A never took the folder"
        time.sleep(0.02)
    holder = json.loads(lock.read_text())
    os.kill(holder["pid"], signal.SIGSTOP)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        second = cluster.sbatch(
            [output, "--job-name=prep-b", script], cwd=elsewhere, env={**env, "SUITE_ROOT": str(REPO_ROOT)}
        )
        third = cluster.sbatch([output, "--job-name=prep-c", script], cwd=elsewhere, env=env)
        info_b, info_c = cluster.wait(second, timeout=180), cluster.wait(third, timeout=180)
        assert cluster.job_info(first)["JobState"] == "RUNNING"
    finally:
        os.kill(holder["pid"], signal.SIGCONT)
    info_a = cluster.wait(first, timeout=300)
    log_a, log_b, log_c = (
        workspace.logs / f"prep-{x}_{j}.out" for x, j in zip("abc", (first, second, third), strict=True)
    )
    assert (info_a["JobState"], info_a["ExitCode"]) == ("COMPLETED", "0:0"), log_a.read_text()[-3000:]
    assert "validated" in log_a.read_text()
    assert (info_b["JobState"], info_b["ExitCode"]) == ("FAILED", "2:0"), log_b.read_text()[-3000:]
    (refusal,) = [line for line in log_b.read_text().splitlines() if "preprocessing: error" in line]
    assert refusal.startswith(
        f"0: preprocessing: error: {data}/train_small is being written by Slurm job {first} "
        f"(job {first} step 0 restart 0, 1 task(s), first on {holder['host']}, since {holder['started']}), "
        "last heartbeat "
    ), refusal
    assert refusal.endswith(
        f"wait for it to end (squeue -j {first}), pass --wait to wait here, or use another --out-root"
    )
    assert (info_c["JobState"], info_c["ExitCode"]) == ("FAILED", "2:0")
    assert log_c.read_text() == (
        f"1.c4-preprocess: error: no suite at {elsewhere} (the submit directory): submit from the repository root or "
        "slurm-scripts/, or export SUITE_ROOT=/path/to/the/repository\n"
    )


def test_a_node_with_its_dev_shm_full_stops_the_job_before_composer_starts(
    cluster: LocalSlurmCluster, workspace: Workspace
) -> None:
    """What used to end as 'Rank 1 crashed with exit code -7' (SIGBUS) is named before any rank starts."""
    args = [f"--output={workspace.logs}/shm-full_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", *OVERRIDES]
    with cluster.shm_filled("node2", 900):
        job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env())
        info = cluster.wait(job, timeout=300)
    text = (workspace.logs / f"shm-full_{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), text[-3000:]
    (line,) = [line for line in text.splitlines() if "/dev/shm on node2" in line]
    assert re.fullmatch(r"1: launch: error: node 1: /dev/shm on node2 has \d+ MiB free of 1,024 MiB and .*", line), line
    assert "--exclude=node2" in line and "0: launch: node 0 (node1): ready" in text
    assert "[run-header]" not in text and "[batch=" not in text  # stopped before node 0 started anything
    assert re.search(rf"\] job {job} end: exit code 2 after \d+ s$", text.rstrip())


def test_a_node_with_fewer_gpus_than_its_peer_stops_the_job_before_composer_starts(
    cluster: LocalSlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    """Each emulated node's ``nvidia-smi -L`` is a stand-in printing lines recorded from an 8x H100
    node (../shared/gpu-outputs/nvidia-smi_L_h100x8.txt): the first 4 on node1, 3 on node2 (an
    emulated node's 1 GiB /dev/shm holds 4 ranks' share): without the agreement node1 would start 4
    ranks, node2 3, with world sizes that do not match."""
    recorded = (REPO_ROOT.parent / "shared" / "gpu-outputs" / "nvidia-smi_L_h100x8.txt").read_text()
    listed = "".join(f"{line}\n" for line in recorded.splitlines()[:4])
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "listed.txt").write_text(listed)
    (tools / "nvidia-smi").write_text(
        '#!/usr/bin/env bash\n[[ "${1:-}" == -L ]] || exit 6\n'
        f'if [[ "${{SLURMD_NODENAME:-}}" == node2 ]]; then head -n 3 {tools}/listed.txt; exit; fi\n'
        f"cat {tools}/listed.txt\n"
    )
    (tools / "nvidia-smi").chmod(0o755)
    args = [f"--output={workspace.logs}/gpus_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", *OVERRIDES]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env(PATH=f"{tools}:{os.environ['PATH']}"))
    info = cluster.wait(job, timeout=300)
    text = (workspace.logs / f"gpus_{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), text[-3000:]
    (line,) = [line for line in text.splitlines() if "would train on" in line]
    assert line.startswith("1: launch: error: node 1: node2 would train on 3 GPU(s), the other 1 node(s) on 4"), line
    assert "0: launch: node 0 (node1): ready, 4 GPU(s)" in text
    assert "[run-header]" not in text and "launch: node 0/2 on" not in text  # Composer started nowhere


def test_gpus_requested_as_gres_are_what_slurm_gives_and_a_node_that_lists_fewer_is_named(
    cluster: LocalSlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    """The cluster's nodes declare 4 GPUs each as GRES (tests/local_slurm.py); the job asks for them
    with ``--gpus-per-node=4`` as a GPU cluster's user does, and Slurm sets ``SLURM_GPUS_ON_NODE`` and
    ``CUDA_VISIBLE_DEVICES`` in every step. The stand-in ``nvidia-smi -L`` (lines recorded from an
    8x H100 node) lists 4 on node1 and 3 on node2 (a GPU off the bus): node2 is named, with what
    Slurm gave and what it lists, and nothing starts."""
    recorded = (REPO_ROOT.parent / "shared" / "gpu-outputs" / "nvidia-smi_L_h100x8.txt").read_text()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "listed.txt").write_text("".join(f"{line}\n" for line in recorded.splitlines()[:4]))
    seen = tmp_path / "seen"
    (tools / "nvidia-smi").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$SLURMD_NODENAME ${{SLURM_GPUS_ON_NODE:-}} ${{CUDA_VISIBLE_DEVICES:-}}" >> {seen}\n'
        '[[ "${1:-}" == -L ]] || exit 6\n'
        f'if [[ "${{SLURMD_NODENAME:-}}" == node2 ]]; then head -n 3 {tools}/listed.txt; exit; fi\n'
        f"cat {tools}/listed.txt\n"
    )
    (tools / "nvidia-smi").chmod(0o755)
    output = f"--output={workspace.logs}/gres_%j.out"
    args = [output, "--nodes=2", "--gpus-per-node=4", TRAIN, "mpt-tiny-cpu", *OVERRIDES]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=workspace.env(PATH=f"{tools}:{os.environ['PATH']}"))
    info = cluster.wait(job, timeout=300)
    text = (workspace.logs / f"gres_{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), text[-3000:]
    assert info["TresPerNode"] == "gres:gpu:4", info  # Slurm allocated the GRES
    (line,) = [line for line in text.splitlines() if "Slurm gave this job" in line]
    assert line.startswith("1: launch: error: node 1: node2: Slurm gave this job 4 GPU(s) and nvidia-smi lists 3"), line
    assert "--exclude=node2" in line
    assert "[run-header]" not in text and "launch: node 0/2 on" not in text  # Composer started nowhere
    # what Slurm set in the steps that ran nvidia-smi: 4 GPUs on each node, devices 0-3
    assert {tuple(s.split()) for s in seen.read_text().splitlines()} == {
        ("node1", "4", "0,1,2,3"),
        ("node2", "4", "0,1,2,3"),
    }


def run_requeued(cluster: LocalSlurmCluster, ws: Workspace) -> tuple[TrainRun, list[Path]]:
    """One run interrupted twice, each time after a checkpoint of the start it interrupts: requeued
    with ``scontrol requeue`` (an admin, a preemption), then sent the time-limit warning that makes
    the script requeue itself (what ``--signal=B:USR1@120`` delivers before the time limit: USR1 to
    the batch shell only). The run, and the checkpoint each interruption came after."""
    job = submit_training(cluster, ws, partition="spare", PATH=cluster.env["PATH"])
    first = wait_for_checkpoint(ws, job)
    subprocess.run(["scontrol", "requeue", job], env=cluster.env, check=True, capture_output=True)
    rank_pid(job, rank=0, timeout=300, restart=1)  # start 1 is up; the ranks are still importing
    second = wait_for_checkpoint(ws, job, after=checkpoint_batch(wait_for_checkpoint(ws, job)))
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=cluster.env, check=True, capture_output=True)
    return finish(cluster, ws, job), [first, second]


REQUEUED_TESTS = ("test_requeue_and_the_time_limit_signal", "test_report_of_a_completed_a_failed")


@pytest.fixture(scope="module", autouse=True)
def requeue_in_background(
    request: pytest.FixtureRequest, cluster: LocalSlurmCluster
) -> Iterator[Future[tuple[TrainRun, list[Path]]] | None]:
    """The requeued run (`run_requeued`), started once the uninterrupted run has ended (its rank timing
    is judged: it runs alone), on partition ``spare`` (node6-8) while this module's other tests use
    ``debug`` (node1-2): it mostly waits (two requeues), so they run meanwhile. Its tests come last.
    Started only when one of them is selected; what keeps it from starting is raised by them."""
    if not any(item.name.startswith(REQUEUED_TESTS) for item in request.session.items):
        yield None
        return
    future: Future[tuple[TrainRun, list[Path]]] = Future()
    try:
        workspace: Workspace = request.getfixturevalue("workspace")
        request.getfixturevalue("uninterrupted")
        decompress_shards(workspace.data)  # both runs read it at once (tests/conftest.py says why)
    except Exception as err:  # the preprocessing or the uninterrupted run: their own tests say so
        future.set_exception(err)
        yield future
        return
    pinned = cluster.pinned()

    def drive() -> None:
        try:
            future.set_result(run_requeued(pinned, workspace))
        except BaseException as err:  # handed to the tests that ask for it
            future.set_exception(err)

    threading.Thread(target=drive, name="requeued-run", daemon=True).start()
    yield future
    if not future.done():  # the module stopped early: the job ends; the daemon thread gives up on its own
        subprocess.run(["scancel", "--partition=spare"], env=cluster.env, check=False, capture_output=True)


@pytest.fixture(scope="module")
def requeued(requeue_in_background: Future[tuple[TrainRun, list[Path]]] | None) -> tuple[TrainRun, list[Path]]:
    assert requeue_in_background is not None
    return requeue_in_background.result()


def test_requeue_and_the_time_limit_signal_resume_from_the_checkpoint(
    requeued: tuple[TrainRun, list[Path]], uninterrupted: TrainRun
) -> None:
    run, saved = requeued
    assert run.info["Restarts"] == "2"
    starts = [line for line in run.text.splitlines() if "[run-header] restart_count:" in line]
    assert [s.rsplit(":", 1)[1].strip() for s in starts] == ["0", "1", "2"]
    assert f"time limit near: requeueing job {run.job_id}" in run.text
    assert run.text.count("time limit near: requeueing job") == 1  # the second interruption, not the first
    assert run.text.index(starts[1]) < run.text.index("time limit near: requeueing job") < run.text.index(starts[2])
    for n, checkpoint in enumerate(saved, start=1):
        following = run.text.index(starts[n + 1]) if n + 1 < len(starts) else len(run.text)
        resumed = parse_log_file_text(run.text[run.text.index(starts[n]) : following])
        assert resumed.train_blocks[0].step > checkpoint_batch(checkpoint)  # after a checkpoint, not from batch 1
        print(f"start {n} resumed at batch {resumed.train_blocks[0].step} (checkpoint {checkpoint.name} before it)")
    last = parse_log_file_text(run.text[run.text.index(starts[2]) :]).train_blocks[-1]
    assert last.step == last.total == 60
    final = run.parsed.train_blocks[-1].metrics[LOSS_KEY]
    assert final == uninterrupted.parsed.train_blocks[-1].metrics[LOSS_KEY]
    # each start ends with its line: the first two stopped by Slurm's SIGTERM, the last one done
    ends = re.findall(rf"^\[\S+\] job {run.job_id} end: (exit code .*) after \d+ s$", run.text, re.MULTILINE)
    assert ends == ["exit code 143 (stopped by SIGTERM)"] * 2 + ["exit code 0"], ends


def test_report_of_a_completed_a_failed_a_never_started_and_a_requeued_run(
    uninterrupted: TrainRun,
    requeued: tuple[TrainRun, list[Path]],
    killed_rank: TrainRun,
    never_started: tuple[str, dict[str, str]],
    mistyped: TrainRun,
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    assert killed_rank.info["JobState"] == "FAILED" and never_started[1]["JobState"] == "FAILED"
    out = subprocess.run(
        [sys.executable, "report.py", str(workspace.logs), "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout)  # the closing notes quote it
    doc = json.loads((tmp_path / "report.json").read_text())
    runs = {r["job_id"]: r for r in doc["runs"]}
    assert runs[uninterrupted.job_id]["status"] == "completed"
    assert (runs[requeued[0].job_id]["status"], runs[requeued[0].job_id]["restarts"]) == ("completed", 2)
    failed = runs[killed_rank.job_id]
    assert failed["status"] == "failed" and failed["last_batch"] < 60, failed
    # the killed rank is the cause, not its peer's "Connection reset by peer" printed before it
    assert re.search(r"ERROR:composer\.cli\.launcher:Rank \d crashed with exit code -9", failed["failure"]), failed
    lines = killed_rank.text.splitlines()
    assert lines[failed["failure_line_number"] - 1] == failed["failure"]  # quoted from the log, line and all
    # a training failure ends the job with 1, whatever the step's code (here 137: the killed rank)
    assert re.fullmatch(
        rf"\[\S+\] job {killed_rank.job_id} end: exit code 1 \(training failed; its step exited with \d+\) "
        r"after \d+ s",
        lines[-1],
    ), lines[-1]
    assert killed_rank.info["ExitCode"] == "1:0"
    assert f"restarts: job {killed_rank.job_id} stops after 0 restart(s): failure 1 in a row" in killed_rank.text
    assert "more than MAX_RESTARTS=0; last failure on node2: rank 1 on node2 was ended by signal 9" in killed_rank.text
    (job,) = [j for j in doc["jobs_without_training"] if j["job_id"] == never_started[0]]
    # stopped by the batch script's check step, before any node: one line, no node number
    assert job["failure"].startswith("launch: error: train_loader: dataset split 'train_small' not found at")
    (typo,) = [j for j in doc["jobs_without_training"] if j["job_id"] == mistyped.job_id]
    assert "no config key 'max_durtion'" in typo["failure"]
    order = [int(r["job_id"]) for r in doc["runs"]]
    assert order == sorted(order)
    assert f"did not train: job {never_started[0]}" in out.stdout
